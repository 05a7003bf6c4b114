import pytest
import torch

from landscape import models
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
        ("cnn", {"colour": 3}, "does not accept kwargs"),
    ],
)
def test_bad_model_names_and_kwargs_are_clear_errors(name, kwargs, match):
    with pytest.raises(LandscapeError, match=match):
        models.build(name, **kwargs)


def test_describe_lists_kwargs_with_defaults():
    table = models.describe()
    assert set(table) == set(models.REGISTRY)
    assert table["cnn"]["num_classes"] == 100
