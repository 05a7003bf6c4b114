import pytest
import torch
import torch.nn.functional as F
from torch import nn

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
        ("lenet5-fednsam", {"num_classes": 100}, (2, 3, 32, 32), 100),
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


class ReferenceLenet5(nn.Module):
    """A transcription of FedNSAM's ``Lenet5`` (github:junkangLiu0/FedNSAM, main_FedNSAM.py), the ground truth."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels=3, out_channels=64, kernel_size=5)
        self.conv2 = nn.Conv2d(in_channels=64, out_channels=64, kernel_size=5)
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        self.fc1 = nn.Linear(64 * 5 * 5, 384)
        self.fc2 = nn.Linear(384, 192)
        self.fc3 = nn.Linear(192, num_classes)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = x.view(-1, 64 * 5 * 5)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return F.log_softmax(self.fc3(x), dim=1)


def test_lenet5_fednsam_is_the_reference_network():
    torch.manual_seed(0)
    ref = ReferenceLenet5(num_classes=100)
    # From the reference's layer sizes: conv 3->64 and 64->64 (5x5), FC 1600->384->192->100.
    expected = (3 * 64 * 25 + 64) + (64 * 64 * 25 + 64) + (1600 * 384 + 384) + (384 * 192 + 192) + (192 * 100 + 100)
    assert expected == 815_332 == sum(p.numel() for p in ref.parameters())
    ours = models.build("lenet5-fednsam", num_classes=100)
    assert models.num_parameters(ours) == expected
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    ours.load_state_dict(ref.state_dict())  # strict: the reference's checkpoints load as they are
    x = torch.randn(4, 3, 32, 32)
    torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=0)


def test_lenet5_fednsam_has_cnns_layers_and_cross_entropy():
    torch.manual_seed(0)
    cnn, fednsam = models.build("cnn", num_classes=10), models.build("lenet5-fednsam", num_classes=10)
    assert {k: v.shape for k, v in cnn.state_dict().items()} == {k: v.shape for k, v in fednsam.state_dict().items()}
    fednsam.load_state_dict(cnn.state_dict())
    x, y = torch.randn(6, 3, 32, 32), torch.arange(6) % 10
    torch.testing.assert_close(fednsam(x), torch.log_softmax(cnn(x), 1))
    assert not torch.allclose(fednsam(x), cnn(x))  # the outputs differ: log-probabilities, not logits
    losses = [F.cross_entropy(m(x), y) for m in (cnn, fednsam)]
    torch.testing.assert_close(losses[0], losses[1])
    grads = [torch.autograd.grad(loss, list(m.parameters())) for loss, m in zip(losses, (cnn, fednsam))]
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_lenet5_is_the_classic_layout():
    model = models.build("lenet5", num_classes=100)
    # conv 3->6, 6->16 (5x5), FC 400->120->84->100.
    expected = (3 * 6 * 25 + 6) + (6 * 16 * 25 + 16) + (400 * 120 + 120) + (120 * 84 + 84) + (84 * 100 + 100)
    assert models.num_parameters(model) == expected == 69_656
    assert [m.out_channels for m in (model.conv1, model.conv2)] == [6, 16]


def test_the_l26_preset_trains_the_reference_network():
    from landscape.train.config import PRESETS

    assert PRESETS["l26-cifar100-fednsam"][1]["model"] == "lenet5-fednsam"
