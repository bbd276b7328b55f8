"""Backbones + linear head: every model builds for MNIST- and CIFAR-shaped inputs, returns one
logit per class, and exposes the features the gradient algebra needs: f(x) = head(features(x))."""
import pytest
import torch

from gradmix_tune.config import ConfigError, load_config
from gradmix_tune.models import build_model



@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small convolutions on a shared 2-core machine: one thread is several times faster."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


SHAPES = {"mnist": (1, 28, 28), "cifar": (3, 32, 32)}
EXPECTED_FEAT = {"mlp": 100, "cnn": 128, "reduced_resnet18": 160, "resnet18": 512, "vit": 128}


@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("name", sorted(EXPECTED_FEAT))
def test_model_builds_and_head_of_features_is_the_forward(name, shape):
    torch.manual_seed(0)
    cfg = load_config(None, [f"model.name={name}"])
    model = build_model(cfg, SHAPES[shape], num_classes=7)
    x = torch.randn(3, *SHAPES[shape])
    model.eval()
    with torch.no_grad():
        logits = model(x)
        feats = model.features(x)
        assert logits.shape == (3, 7)
        assert feats.shape == (3, model.feat_dim)
        assert model.feat_dim == EXPECTED_FEAT[name]
        torch.testing.assert_close(model.head(feats), logits)
        assert torch.isfinite(logits).all()
    # and it trains: one step moves the loss, every parameter gets a gradient
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    y = torch.tensor([0, 3, 6])
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    opt.step()
    model.eval()
    with torch.no_grad():
        assert not torch.equal(model(x), logits)


def test_mlp_hidden_sizes_are_configurable():
    cfg = load_config(None, ["model.hidden=[32, 16, 8]"])
    model = build_model(cfg, (1, 8, 8), num_classes=10)
    linears = [m for m in model.backbone if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(64, 32), (32, 16), (16, 8)]
    assert model.feat_dim == 8 and model.head.in_features == 8 and model.head.out_features == 10


def test_mlp_takes_vectors_and_a_linear_model_when_no_hidden_layers():
    model = build_model(load_config(None, ["model.hidden=[]"]), (20,), num_classes=4)
    assert model.feat_dim == 20
    assert model(torch.randn(5, 20)).shape == (5, 4)


def test_reduced_resnet18_width_follows_nf():
    model = build_model(load_config(None, ["model.name=reduced_resnet18", "model.nf=8"]), (3, 32, 32), 10)
    assert model.feat_dim == 64  # 8 * nf
    assert sum(p.numel() for p in model.parameters()) < 200_000


def test_image_models_reject_vector_inputs_with_a_config_error():
    with pytest.raises(ConfigError) as e:
        build_model(load_config(None, ["model.name=cnn"]), (20,), 4)
    assert "model.name" in str(e.value) and "mlp" in str(e.value)
