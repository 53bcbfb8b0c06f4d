"""The Elman RNN and the LSTM: equations, shapes, parameter names, seeding, input checks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from models import MODEL_KINDS, ElmanRNN, LSTMModel, build_model

KINDS = ("elman", "lstm")


def inputs(batch, steps, seed=0, n_input=2):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, steps, n_input, generator=g) * 2 - 1
    x[:, :, 1] = torch.randint(-1, 2, (batch, steps), generator=g).float()
    return x


def elman_by_hand(model, x):
    """h_0 = tanh(l1(x_0)); h_t = tanh(l1(x_t) + hr(h_{t-1})); y_t = l2(h_t)."""
    p = {k: v.detach() for k, v in model.state_dict().items()}
    h = torch.tanh(F.linear(x[:, 0], p["l1.weight"], p["l1.bias"]))
    ys = [F.linear(h, p["l2.weight"], p["l2.bias"])]
    for t in range(1, x.shape[1]):
        pre = F.linear(x[:, t], p["l1.weight"], p["l1.bias"])
        h = torch.tanh(pre + F.linear(h, p["hr.weight"], p["hr.bias"]))
        ys.append(F.linear(h, p["l2.weight"], p["l2.bias"]))
    return torch.stack(ys, dim=1)


def lstm_by_hand(model, x):
    """The LSTM cell in float64 with PyTorch's gate order i, f, g, o and zero initial state."""
    p = {k: v.detach().double() for k, v in model.state_dict().items()}
    x = x.double()
    n_hidden = p["lstm.weight_hh_l0"].shape[1]
    h = torch.zeros(x.shape[0], n_hidden, dtype=torch.float64)
    c = torch.zeros_like(h)
    ys = []
    for t in range(x.shape[1]):
        z = (
            x[:, t] @ p["lstm.weight_ih_l0"].T
            + p["lstm.bias_ih_l0"]
            + h @ p["lstm.weight_hh_l0"].T
            + p["lstm.bias_hh_l0"]
        )
        zi, zf, zg, zo = z.split(n_hidden, dim=1)
        i, f, g, o = torch.sigmoid(zi), torch.sigmoid(zf), torch.tanh(zg), torch.sigmoid(zo)
        c = f * c + i * g
        h = o * torch.tanh(c)
        ys.append(h @ p["fc.weight"].T + p["fc.bias"])
    return torch.stack(ys, dim=1)


# --- equations ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("batch", "steps", "n_hidden"), [(1, 1, 2), (3, 6, 2), (2, 40, 5)])
def test_elman_equals_the_equations(batch, steps, n_hidden):
    model = build_model("elman", n_hidden=n_hidden, seed=3)
    x = inputs(batch, steps, seed=batch + steps)
    expected = elman_by_hand(model, x)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_reference(x), expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-6)


def test_elman_first_step_has_no_recurrence():
    model = build_model("elman", seed=1)
    x = inputs(2, 5)
    with torch.no_grad():
        model.hr.weight.fill_(100.0)
        model.hr.bias.fill_(100.0)
        y0 = model.l2(torch.tanh(model.l1(x[:, 0])))
        torch.testing.assert_close(model(x)[:, 0], y0)
        torch.testing.assert_close(model.forward_reference(x)[:, 0], y0)


def test_lstm_equals_a_fresh_torch_lstm_with_the_same_weights():
    model = build_model("lstm", seed=4)
    sd = model.state_dict()
    lstm = nn.LSTM(2, 2, batch_first=True)
    fc = nn.Linear(2, 1)
    lstm.load_state_dict({k.removeprefix("lstm."): v for k, v in sd.items() if k[:5] == "lstm."})
    fc.load_state_dict({k.removeprefix("fc."): v for k, v in sd.items() if k[:3] == "fc."})
    x = inputs(4, 30, seed=9)
    with torch.no_grad():
        expected = fc(lstm(x)[0])
        torch.testing.assert_close(model.forward_reference(x), expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("batch", "steps", "n_hidden"), [(1, 1, 2), (2, 5, 2), (3, 8, 3)])
def test_lstm_equals_the_cell_equations(batch, steps, n_hidden):
    model = build_model("lstm", n_hidden=n_hidden, seed=5)
    x = inputs(batch, steps, seed=steps)
    expected = lstm_by_hand(model, x).float()
    with torch.no_grad():
        torch.testing.assert_close(model.forward_reference(x), expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_forward_equals_reference_on_a_long_batch(kind):
    model = build_model(kind, seed=6)
    x = inputs(5, 400, seed=1)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.forward_reference(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_forward_equals_reference_on_a_large_batch(kind):
    # Batch × length large enough that an inference path working in time chunks needs several.
    model = build_model(kind, seed=6)
    x = inputs(4096, 300, seed=5)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.forward_reference(x), rtol=1e-5, atol=1e-5)
    with torch.inference_mode():
        torch.testing.assert_close(model(x), model.forward_reference(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_float64_models_equal_the_equations(kind):
    model = build_model(kind, n_hidden=3, seed=10).double()
    x = inputs(3, 20, seed=6).double()
    with torch.no_grad():
        expected = elman_by_hand(model, x) if kind == "elman" else lstm_by_hand(model, x)
        assert model(x).dtype == torch.float64
        torch.testing.assert_close(model(x), expected, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(model.forward_reference(x), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_sequences_in_a_batch_do_not_interact(kind):
    model = build_model(kind, seed=7)
    x = inputs(4, 25, seed=2)
    with torch.no_grad():
        together = model(x)
        for b in range(4):
            torch.testing.assert_close(together[b], model(x[b : b + 1])[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_outputs_are_causal(kind):
    model = build_model(kind, seed=8)
    x = inputs(2, 20, seed=3)
    x2 = x.clone()
    x2[:, 12:] = -x2[:, 12:]
    with torch.no_grad():
        y, y2 = model(x), model(x2)
    torch.testing.assert_close(y[:, :12], y2[:, :12])
    assert not torch.allclose(y[:, 12:], y2[:, 12:])


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_equal_the_reference_gradients(kind):
    model = build_model(kind, seed=9)
    x, target = inputs(3, 30, seed=4), torch.randn(3, 30, 1, generator=torch.Generator())
    grads = []
    for run in (model, model.forward_reference):
        model.zero_grad(set_to_none=True)
        F.mse_loss(run(x), target).backward()
        grads.append({k: p.grad.clone() for k, p in model.named_parameters()})
    assert set(grads[0]) == {k for k, _ in model.named_parameters()}
    for k in grads[0]:
        assert torch.isfinite(grads[0][k]).all()
        assert grads[0][k].abs().sum() > 0, k
        torch.testing.assert_close(grads[0][k], grads[1][k], rtol=1e-4, atol=1e-6)


# --- shapes and parameters ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("batch", "steps"), [(1, 1), (1, 9), (5, 1), (3, 7)])
def test_output_shape(kind, batch, steps):
    model = build_model(kind, seed=0)
    with torch.no_grad():
        for run in (model, model.forward_reference):
            y = run(inputs(batch, steps))
            assert y.shape == (batch, steps, 1)
            assert y.dtype == torch.float32
            assert torch.isfinite(y).all()


@pytest.mark.parametrize("kind", KINDS)
def test_output_shape_with_more_outputs(kind):
    model = build_model(kind, n_input=3, n_hidden=4, n_out=3, seed=0)
    with torch.no_grad():
        assert model(torch.zeros(2, 6, 3)).shape == (2, 6, 3)


def test_elman_parameter_names_and_shapes():
    shapes = {k: tuple(v.shape) for k, v in build_model("elman").state_dict().items()}
    assert shapes == {
        "l1.weight": (2, 2),
        "l1.bias": (2,),
        "hr.weight": (2, 2),
        "hr.bias": (2,),
        "l2.weight": (1, 2),
        "l2.bias": (1,),
    }


def test_lstm_parameter_names_and_shapes():
    shapes = {k: tuple(v.shape) for k, v in build_model("lstm").state_dict().items()}
    assert shapes == {
        "lstm.weight_ih_l0": (8, 2),
        "lstm.weight_hh_l0": (8, 2),
        "lstm.bias_ih_l0": (8,),
        "lstm.bias_hh_l0": (8,),
        "fc.weight": (1, 2),
        "fc.bias": (1,),
    }


def test_hidden_sizes_default_to_two():
    elman, lstm = build_model("elman"), build_model("lstm")
    assert isinstance(elman, ElmanRNN)
    assert isinstance(lstm, LSTMModel)
    assert elman.n_hidden == 2
    assert elman.hr.weight.shape == (2, 2)
    assert lstm.n_hidden == 2
    assert lstm.lstm.hidden_size == 2
    assert ElmanRNN().n_hidden == 2
    assert LSTMModel().lstm.hidden_size == 2


def test_model_kinds():
    assert MODEL_KINDS == ("elman", "lstm")


def test_unknown_kind_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"^kind must be one of") as e:
        build_model("gru")
    assert "elman" in str(e.value)
    assert "lstm" in str(e.value)
    assert "'gru'" in str(e.value)


@pytest.mark.parametrize("name", ["n_input", "n_hidden", "n_out"])
@pytest.mark.parametrize("bad", [0, -1, 2.0, True])
def test_bad_sizes_are_rejected_by_name(name, bad):
    with pytest.raises(ValueError, match=rf"^{name} must be a positive integer"):
        build_model("lstm", **{name: bad})


# --- input checks -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n_features", [1, 3])
def test_wrong_feature_count_is_rejected(kind, n_features):
    model = build_model(kind, seed=0)
    for run in (model, model.forward_reference):
        with pytest.raises(ValueError, match=rf"2 features per step, got {n_features}"):
            run(torch.zeros(1, 5, n_features))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", [(5, 2), (1, 1, 5, 2), (0, 5, 2), (1, 0, 2)])
def test_bad_input_shapes_are_rejected(kind, shape):
    model = build_model(kind, seed=0)
    for run in (model, model.forward_reference):
        with pytest.raises(ValueError, match=r"^x must"):
            run(torch.zeros(shape))


@pytest.mark.parametrize("kind", KINDS)
def test_non_tensor_input_is_rejected(kind):
    with pytest.raises(ValueError, match=r"^x must be a torch.Tensor"):
        build_model(kind, seed=0)([[[0.0, 1.0]]])


# --- seeding ------------------------------------------------------------------------------------


def params(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("kind", KINDS)
def test_seeded_weights_are_reproducible_and_ignore_the_global_seed(kind):
    torch.manual_seed(1)
    a = params(build_model(kind, seed=17))
    torch.manual_seed(2)
    torch.rand(5)
    b = params(build_model(kind, seed=17))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("kind", KINDS)
def test_different_seeds_give_different_weights(kind):
    a, b = params(build_model(kind, seed=17)), params(build_model(kind, seed=18))
    for k in a:
        assert not torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("kind", KINDS)
def test_seeded_weights_stay_in_pytorchs_default_ranges(kind):
    model = build_model(kind, n_hidden=8, seed=3)
    for name, p in model.named_parameters():
        # nn.Linear: U(±1/√in_features), bias included; nn.LSTM: U(±1/√hidden_size).
        bound = (2 if name.startswith("l1.") else 8) ** -0.5
        assert p.abs().max() <= bound, name
        if p.numel() >= 16:  # drawn over the whole range, not a narrower one
            assert p.abs().max() > 0.8 * bound, name
            assert p.min() < 0 < p.max(), name


def test_the_same_seed_gives_different_elman_and_lstm_outputs():
    x = inputs(1, 10)
    with torch.no_grad():
        assert not torch.allclose(build_model("elman", seed=0)(x), build_model("lstm", seed=0)(x))
