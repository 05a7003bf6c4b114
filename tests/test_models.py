import pytest
import torch

from landscape import imports, models
from landscape.errors import LandscapeError


def test_cifar_cnn_has_the_papers_parameter_count():
    # [C22 §5]: conv 3->64, conv 64->64 (5x5), FC 1600->384->192->100.
    expected = (3 * 64 * 25 + 64) + (64 * 64 * 25 + 64) + (1600 * 384 + 384) + (384 * 192 + 192) + (192 * 100 + 100)
    assert expected == 815_332
    assert models.num_parameters(models.build("cnn", num_classes=100)) == expected


@pytest.mark.parametrize(
    "name, kwargs, shape, classes",
    [
        ("cnn", {"num_classes": 10}, (2, 3, 32, 32), 10),
        ("resnet18-gn", {"num_classes": 100}, (2, 3, 32, 32), 100),
        ("lenet5", {"num_classes": 10}, (2, 3, 32, 32), 10),
        ("vit", {"num_classes": 10, "dim": 32, "depth": 1, "heads": 2}, (2, 3, 32, 32), 10),
        ("mlp", {"hidden": [8, 8]}, (2, 64), 10),
    ],
)
def test_every_registered_model_maps_inputs_to_logits(name, kwargs, shape, classes):
    model = models.build(name, **kwargs)
    assert model(torch.randn(*shape)).shape == (shape[0], classes)


def test_resnet_uses_groupnorm_not_batchnorm():
    model = models.build("resnet18-gn")
    kinds = {type(m).__name__ for m in model.modules()}
    assert "GroupNorm" in kinds and "BatchNorm2d" not in kinds


def test_factory_path_builds_user_architectures():
    model = models.build("tests.conftest:tiny_cnn", norm="group")
    assert type(model).__name__ == "TinyCNN"


@pytest.mark.parametrize(
    "name, kwargs, match",
    [
        ("nope", {}, "unknown model 'nope'"),
        ("no_such_module_xyz:f", {}, "cannot import module"),
        ("tests.conftest:missing", {}, "has no callable 'missing'"),
        ("cnn", {"colour": 3}, "raised TypeError.*unexpected keyword argument 'colour'"),
        ("mlp", {"hidden": "abc"}, "model 'mlp' .*raised TypeError.*check --model"),
        ("mlp", {"hidden": [-1]}, "raised RuntimeError.*negative dimension"),
        ("tests.test_models:failing_factory", {}, "raised ValueError: the factory fails"),
        ("tests.test_models:not_a_module", {}, "returned int, not a torch.nn.Module"),
    ],
)
def test_bad_model_names_and_kwargs_are_clear_errors(name, kwargs, match):
    with pytest.raises(LandscapeError, match=match) as info:
        models.build(name, **kwargs)
    assert "\n" not in str(info.value)


def failing_factory():
    raise ValueError("the factory fails\nover two lines")


def not_a_module():
    return 3


@pytest.mark.parametrize("name", ["os:system", "subprocess:run", "builtins:exec", "tests.conftest:tiny_cnn"])
def test_a_factory_named_by_a_file_is_never_imported(name, monkeypatch):
    imported = []
    monkeypatch.setattr(imports.importlib, "import_module", lambda m: imported.append(m))
    with pytest.raises(LandscapeError, match=f"refused to import model '{name}' named by a file.*runs code.*"
                       f"pass --model {name}"):
        models.resolve(name, allow_import=False, origin="ckpt.pt")
    assert imported == []
    assert models.resolve("mlp", allow_import=False) is models.MLP


def test_describe_lists_kwargs_with_defaults():
    table = models.describe()
    assert set(table) == set(models.REGISTRY)
    assert table["cnn"]["num_classes"] == 100
