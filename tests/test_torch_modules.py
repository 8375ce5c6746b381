"""faceops.torch's modules: parameters, state_dict, Wen et al.'s centre update,
Partial FC's sampled gradients and optimiser state, and torch.compile(fullgraph=True)
of a training step with each loss against eager."""

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="faceops.torch needs PyTorch (pip install '.[torch]')")

import faceops
import faceops.torch as ft
from faceops import reference


def _batch(seed, n=16, d=8, classes=4):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), (torch.arange(n) % classes)[torch.randperm(n, generator=g)]


class ContrastiveOnHalves(torch.nn.Module):
    """ContrastiveLoss on the pairs (first half, second half) of a batch, similar when labels agree."""

    def __init__(self):
        super().__init__()
        self.loss = ft.ContrastiveLoss(1.0)

    def forward(self, embeddings, labels):
        half = len(labels) // 2
        return self.loss(embeddings[:half], embeddings[half:], labels[:half] == labels[half:])


class ExplicitTripletsOfThirds(torch.nn.Module):
    """triplet_loss_explicit on (anchor, positive, negative) = the batch's three thirds."""

    def forward(self, embeddings, labels):
        third = len(labels) // 3
        return ft.triplet_loss_explicit(*embeddings[:3 * third].split(third), 1.0)


class PairWithFloatTheta(torch.nn.Module):
    """The functional pair loss with theta a Python float (made a tensor inside)."""

    def forward(self, embeddings, labels):
        return ft.pair_loss(embeddings, labels, 1.25)


MODULES = {
    "triplet": lambda: ft.TripletLoss(0.2, "hard"),
    "pair": lambda: ft.PairLoss(theta=1.0),
    "pair_float_theta": PairWithFloatTheta,
    "contrastive": ContrastiveOnHalves,
    "explicit_triplets": ExplicitTripletsOfThirds,
    "center": lambda: ft.CenterLoss(4, 8),
    "center_alpha": lambda: ft.CenterLoss(4, 8, alpha=0.5),
    "arcface": lambda: ft.ArcFace(4, 8, s=8.0),
    "cosface": lambda: ft.CosFace(4, 8, s=8.0),
    "partial_fc": lambda: ft.ArcFace(40, 8, s=8.0, sample_rate=0.25),
}


def test_learnable_state_is_parameters():
    assert [n for n, _ in ft.PairLoss().named_parameters()] == ["theta"]
    assert [n for n, _ in ft.CenterLoss(4, 8).named_parameters()] == ["centers"]
    assert not ft.CenterLoss(4, 8, alpha=0.5).centers.requires_grad
    head = ft.MarginSoftmaxLoss(10, 8, margin="cosface")
    assert [n for n, _ in head.named_parameters()] == ["weight"] and head.weight.shape == (10, 8)
    assert (head.m1, head.m2, head.m3) == faceops.MARGINS["cosface"]
    assert list(ft.TripletLoss().parameters()) == []


@pytest.mark.parametrize("name", ["pair", "center", "center_alpha", "arcface"])
def test_state_dict_round_trips(name):
    torch.manual_seed(0)
    trained, fresh = MODULES[name](), MODULES[name]()
    x, labels = _batch(1)
    learnable = [p for p in trained.parameters() if p.requires_grad]
    loss = trained(x, labels)  # CenterLoss with alpha moves its centres here
    if learnable:
        loss.backward()
        torch.optim.SGD(learnable, lr=0.5).step()
    fresh.load_state_dict(trained.state_dict())
    for key, value in trained.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    fresh.eval(), trained.eval()
    assert torch.equal(fresh(x, labels), trained(x, labels))


def test_center_loss_with_alpha_moves_centres_by_eq4_in_training_only():
    module = ft.CenterLoss(4, 8, alpha=0.5, dtype=torch.float64)
    module.centers.data.normal_()
    x, labels = _batch(2)
    x = x.double()
    expected_loss = reference.center_loss(x.numpy(), labels.numpy(), module.centers.detach().numpy())[0]
    moved = module.centers.detach().numpy().copy()
    reference.center_update(x.numpy(), labels.numpy(), moved, 0.5)
    loss = module(x, labels)
    np.testing.assert_allclose(loss.item(), expected_loss, rtol=1e-12)  # computed before the move
    np.testing.assert_allclose(module.centers.detach().numpy(), moved, rtol=1e-12, atol=1e-14)
    module.eval()
    before = module.centers.detach().clone()
    module(x, labels)
    assert torch.equal(module.centers, before)


def test_center_loss_without_alpha_trains_centres_by_the_optimiser():
    module = ft.CenterLoss(4, 8, dtype=torch.float64)
    x, labels = _batch(3)
    x = x.double().requires_grad_()
    module(x, labels).backward()
    _, dx, dcenters = reference.center_loss(x.detach().numpy(), labels.numpy(), np.zeros((4, 8)))
    np.testing.assert_allclose(module.centers.grad.numpy(), dcenters, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(x.grad.numpy(), dx, rtol=1e-12, atol=1e-15)


def test_pair_loss_theta_gets_its_gradient():
    module = ft.PairLoss(theta=2.0, dtype=torch.float64)
    x, labels = _batch(4)
    module(x.double(), labels).backward()
    _, _, dtheta = faceops.pair_loss(x.double().numpy(), labels.numpy(), 2.0)
    assert module.theta.grad.item() == dtheta


def test_sampled_classes_keep_the_batch_and_need_no_label_values():
    labels = torch.tensor([3, 3, 17, 90, 5, 17])
    classes = ft.sample_classes(labels, 100, 0.1, generator=torch.Generator().manual_seed(0))
    assert classes.dtype == torch.int64 and len(classes) == 10
    assert torch.equal(classes, classes.sort().values) and len(classes.unique()) == 10
    assert set(labels.tolist()) <= set(classes.tolist())
    # fewer sampled than the batch's rows: k = N, so every distinct label fits
    assert len(ft.sample_classes(labels, 100, 0.01)) == 6


def test_partial_fc_is_the_margin_softmax_over_the_sampled_rows():
    x, labels = _batch(5)
    weight = torch.randn(40, 8, requires_grad=True)
    loss = ft.arcface_loss(x, labels, weight, 8.0, sample_rate=0.25, generator=torch.Generator().manual_seed(1))
    loss.backward()
    classes = ft.sample_classes(labels, 40, 0.25, generator=torch.Generator().manual_seed(1))
    subset_labels = np.searchsorted(classes.numpy(), labels.numpy())
    want, _, dweight = faceops.margin_softmax_loss(x.numpy(), subset_labels, weight.detach()[classes].numpy().copy(),
                                                   8.0, 1.0, 0.5, 0.0)
    assert loss.item() == want
    assert torch.equal(weight.grad[classes], torch.from_numpy(dweight))
    others = torch.ones(40, dtype=torch.bool)
    others[classes] = False
    assert torch.count_nonzero(weight.grad[others]) == 0


def test_partial_fc_sparse_gradient_leaves_other_rows_and_their_optimiser_state_alone():
    torch.manual_seed(0)
    head = ft.ArcFace(200, 8, s=8.0, sample_rate=0.1, sparse_grad=True)
    optimiser = torch.optim.SparseAdam(head.parameters(), lr=0.01)
    start = head.weight.detach().clone()
    x, labels = _batch(6)
    touched = torch.zeros(200, dtype=torch.bool)
    for step in range(3):
        torch.manual_seed(step)
        classes = ft.sample_classes(labels, 200, 0.1)
        torch.manual_seed(step)  # the forward draws the same sample
        optimiser.zero_grad()
        head(x, labels).backward()
        assert head.weight.grad.is_sparse
        assert set(head.weight.grad.coalesce().indices()[0].tolist()) == set(classes.tolist())
        optimiser.step()
        touched[classes] = True
    assert 20 <= touched.sum() < 200
    state = optimiser.state[head.weight]
    assert torch.equal(head.weight.detach()[~touched], start[~touched])
    assert not torch.equal(head.weight.detach()[touched], start[touched])
    for moment in ("exp_avg", "exp_avg_sq"):
        assert torch.count_nonzero(state[moment][~touched]) == 0
        assert torch.count_nonzero(state[moment][touched]) > 0


def test_partial_fc_dense_gradient_with_momentum_moves_other_rows():
    """The caveat docs/torch.md states: a dense zero gradient still lets momentum move a row."""
    torch.manual_seed(0)
    head = ft.ArcFace(200, 8, s=8.0, sample_rate=0.1)
    optimiser = torch.optim.SGD(head.parameters(), lr=0.1, momentum=0.9)
    x, labels = _batch(7)
    torch.manual_seed(0)
    first = ft.sample_classes(labels, 200, 0.1)
    torch.manual_seed(0)
    head(x, labels).backward()
    optimiser.step()
    after_first = head.weight.detach().clone()
    optimiser.zero_grad()
    torch.manual_seed(1)
    second = ft.sample_classes(labels, 200, 0.1)
    torch.manual_seed(1)
    head(x, labels).backward()
    optimiser.step()
    only_first = torch.zeros(200, dtype=torch.bool)
    only_first[first] = True
    only_first[second] = False
    assert only_first.any()
    assert not torch.equal(head.weight.detach()[only_first], after_first[only_first])


# --- torch.compile(fullgraph=True) against eager ---------------------------------------------

# aot_eager runs Dynamo's full-graph capture and AOTAutograd over the fake kernels (where a
# missing fake kernel or a graph break shows); one case goes through Inductor's codegen too.
# (Inductor's import path warns about torch.jit.script_method; the suite turns warnings into errors.)
INDUCTOR_WARNING = pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
COMPILED = [(name, "aot_eager") for name in MODULES] + [pytest.param("triplet", "inductor", marks=INDUCTOR_WARNING)]


def _training_step(loss_fn, model, optimiser, forward, x, labels):
    optimiser.zero_grad()
    loss = forward(x, labels)
    loss.backward()
    optimiser.step()
    return loss.detach()


@pytest.mark.parametrize("name,backend", COMPILED)
def test_compiled_training_step_matches_eager(name, backend):
    results = []
    for compiled in (False, True):
        torch.manual_seed(0)
        model, loss_fn = torch.nn.Linear(8, 8), MODULES[name]()
        parameters = list(model.parameters()) + [p for p in loss_fn.parameters() if p.requires_grad]
        optimiser = torch.optim.SGD(parameters, lr=0.1)

        def forward(x, labels, model=model, loss_fn=loss_fn):
            return loss_fn(model(x), labels)

        if compiled:
            torch._dynamo.reset()
            forward = torch.compile(forward, fullgraph=True, backend=backend)
        torch.manual_seed(1)  # Partial FC's sample
        losses = [_training_step(loss_fn, model, optimiser, forward, *_batch(seed)) for seed in (8, 9)]
        results.append((losses, [p.detach().clone() for p in model.parameters()],
                        [b.detach().clone() for b in loss_fn.parameters()]))
    (eager_losses, eager_model, eager_state), (losses, model_params, state) = results
    # Inductor fuses the Linear's arithmetic differently: float32 rounding, not a different step
    tolerance = dict(rtol=1e-5, atol=1e-6) if backend == "inductor" else dict(rtol=0, atol=0)
    for got, want in zip(losses + model_params + state, eager_losses + eager_model + eager_state):
        torch.testing.assert_close(got, want, **tolerance)
    assert eager_losses[0] > 0


@pytest.mark.parametrize("name", ["triplet", "pair", "center", "center_alpha", "arcface", "partial_fc"])
def test_module_errors_name_the_embeddings_argument(name):
    """A module is called loss_fn(embeddings, labels): its errors name embeddings, never the
    functional forms' x."""
    loss_fn = MODULES[name]()
    x, labels = _batch(2)
    with pytest.raises(ValueError, match=r"^embeddings: expected a contiguous tensor .* pass "
                                         r"embeddings\.contiguous\(\)$"):
        loss_fn(torch.randn(8, 16).t(), labels)
    nan = x.clone()
    nan[3, 1] = float("nan")
    with pytest.raises(ValueError, match="^embeddings: contains NaN or Inf"):
        loss_fn(nan, labels)
    with pytest.raises(TypeError, match="^embeddings: expected dtype"):
        loss_fn(x.to(torch.int32), labels)
    with pytest.raises(ValueError, match=r"^labels: expected shape \(16,\)"):
        loss_fn(x, labels[:4])
