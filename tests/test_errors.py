"""Clear errors, raised before any work is done, that say what was wrong and how to fix it."""
import re

import numpy as np
import pytest

import fastmlp
from fastmlp import Activation, Dense
from fastmlp.model import TrainingDivergedError
from fastmlp.optim import SGD, Adam, RMSprop


def compiled(backend_name, loss="cross_entropy", k=3, d=4, **kw):
    m = fastmlp.Sequential([Dense(5, "relu"), Dense(k)], input_dim=d, seed=0, backend=backend_name, **kw)
    m.compile(loss=loss, optimizer=SGD(lr=0.1))
    return m


def data(n=10, d=4, k=3):
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, d)), np.arange(n) % k


def assert_untouched(model, before):
    """No work was done: weights unchanged and no optimizer step taken."""
    for a, b in zip(model.get_weights(), before):
        np.testing.assert_array_equal(a, b)
    assert model.optimizer is None or model.optimizer.t == 0


# ------------------------------------------------------------- bad X
@pytest.mark.parametrize("bad,kind", [(np.nan, "NaN"), (np.inf, "infinity"), (-np.inf, "infinity")])
def test_nonfinite_X_names_row_and_column(backend_name, bad, kind):
    model = compiled(backend_name)
    before = model.get_weights()
    X, y = data()
    X[6, 2] = bad
    msg = f"X contains {kind} at row 6, column 2; clean or impute it first."
    with pytest.raises(ValueError, match=re.escape(msg)):
        model.fit(X, y, verbose=0)
    assert_untouched(model, before)
    with pytest.raises(ValueError, match=re.escape(msg)):
        model.predict(X)
    with pytest.raises(ValueError, match=re.escape(msg)):
        model.evaluate(X, y)
    Xv = X.copy()
    with pytest.raises(ValueError, match=re.escape(f"X_val contains {kind} at row 6, column 2")):
        model.fit(data()[0], y, verbose=0, validation_data=(Xv, y))
    assert_untouched(model, before)


def test_nonfinite_X_float32_and_image(backend_name):
    model = compiled(backend_name, d=6)
    X = np.zeros((4, 2, 3), dtype=np.float32)
    X[3, 1, 0] = np.nan  # flattened column 3
    with pytest.raises(ValueError, match=r"X contains NaN at row 3, column 3"):
        model.predict(X)


def test_nonfinite_y(backend_name):
    X, y = data()
    model = compiled(backend_name, loss="mse", k=2)
    Y = np.zeros((10, 2))
    Y[4, 1] = np.nan
    with pytest.raises(ValueError, match=r"y contains NaN at row 4, column 1; clean it first\."):
        model.fit(X, Y, verbose=0)
    Y[4, 1] = np.inf
    with pytest.raises(ValueError, match=r"y contains infinity at row 4, column 1"):
        model.fit(X, Y, verbose=0)
    clf = compiled(backend_name)
    yf = y.astype(float)
    yf[7] = np.nan
    with pytest.raises(ValueError, match=r"y contains NaN at row 7"):
        clf.fit(X, yf, verbose=0)
    assert clf.optimizer.t == 0 and model.optimizer.t == 0


def test_wrong_number_of_features(backend_name):
    model = compiled(backend_name, d=4)
    with pytest.raises(ValueError, match=r"X has 5 features, but the model was built for 4\."):
        model.predict(np.zeros((3, 5)))
    with pytest.raises(ValueError, match=r"X has 3 features, but the model was built for 4\."):
        model.fit(np.zeros((3, 3)), [0, 1, 2], verbose=0)
    with pytest.raises(ValueError, match=r"X has 5 features"):
        model.evaluate(np.zeros((3, 5)), [0, 1, 2])


def test_empty_X(backend_name):
    model = compiled(backend_name)
    with pytest.raises(ValueError, match=r"X is empty \(0 samples\)"):
        model.fit(np.zeros((0, 4)), np.zeros(0, dtype=int), verbose=0)
    with pytest.raises(ValueError, match=r"X is empty"):
        model.predict(np.zeros((0, 4)))
    with pytest.raises(ValueError, match=r"X has 0 features"):
        fastmlp.Sequential([Dense(2)], backend=backend_name).compile(loss="mse").fit(
            np.zeros((3, 0)), np.zeros(3), verbose=0)


def test_one_dimensional_X(backend_name):
    with pytest.raises(ValueError, match=r"X must be 2-D \(n_samples, n_features\), got shape \(4,\).*reshape"):
        compiled(backend_name).predict(np.zeros(4))


@pytest.mark.parametrize("X,dtype_text", [
    (np.array([["a", "b", "c", "d"]] * 3), "<U1"),
    (np.array([[1, 2, 3, "x"]] * 3, dtype=object), "object"),
    ([["1", "2", "3", "4"]] * 3, "<U1"),
])
def test_non_numeric_X(backend_name, X, dtype_text):
    model = compiled(backend_name)
    with pytest.raises(TypeError, match=rf"X must hold numbers \(integer or floating point\), got dtype {dtype_text}"):
        model.fit(X, [0, 1, 2], verbose=0)
    with pytest.raises(TypeError, match="Encode strings or categories as numbers first"):
        model.predict(X)


def test_non_numeric_y(backend_name):
    X, _ = data(n=3)
    with pytest.raises(TypeError, match=r"y must hold numbers"):
        compiled(backend_name).fit(X, np.array(["a", "b", "c"]), verbose=0)


def test_ragged_X(backend_name):
    with pytest.raises(ValueError, match="X could not be read as a numeric array"):
        compiled(backend_name).predict([[1.0, 2.0, 3.0, 4.0], [1.0]])


# ------------------------------------------------------------- bad y
def test_non_integer_labels(backend_name):
    X, _ = data(n=4)
    model = compiled(backend_name)
    with pytest.raises(ValueError, match=r"y must hold integer class labels for this loss, got 0\.5 at row 2\."
                                         r" Use loss='mse' for regression"):
        model.fit(X, [0.0, 1.0, 0.5, 2.0], verbose=0)
    assert model.optimizer.t == 0


@pytest.mark.parametrize("labels,bad", [([0, 1, 3, 2], 3), ([0, -1, 1, 2], -1)])
def test_labels_out_of_range(backend_name, labels, bad):
    X, _ = data(n=4)
    model = compiled(backend_name)
    with pytest.raises(ValueError, match=rf"y has label {bad}, but the output layer has 3 units: labels must be "
                                         r"in \[0, 3\)"):
        model.fit(X, labels, verbose=0)
    with pytest.raises(ValueError, match=rf"y has label {bad}"):
        model.evaluate(X, labels)


def test_labels_2d_wrong_shape(backend_name):
    X, _ = data(n=4)
    with pytest.raises(ValueError, match=r"y must be 1-D integer class labels, got shape \(4, 2\)"):
        compiled(backend_name).fit(X, np.zeros((4, 2)), verbose=0)


def test_nll_rejects_onehot(backend_name):
    m = fastmlp.Sequential([Dense(3), Activation("log_softmax")], input_dim=4, backend=backend_name)
    m.compile(loss="nll", optimizer="sgd")
    X, y = data(n=4)
    with pytest.raises(ValueError, match="takes integer class labels, not one-hot rows"):
        m.fit(X, np.eye(3)[y], verbose=0)


def test_mismatched_lengths(backend_name):
    X, y = data(n=10)
    model = compiled(backend_name)
    with pytest.raises(ValueError, match=r"X has 10 samples but y has 9; they must match\."):
        model.fit(X, y[:9], verbose=0)
    reg = compiled(backend_name, loss="mse", k=2)
    with pytest.raises(ValueError, match=r"X has 10 samples but y has 11"):
        reg.fit(X, np.zeros((11, 2)), verbose=0)
    with pytest.raises(ValueError, match=r"y has 3 columns, but the output layer has 2 units"):
        reg.fit(X, np.zeros((10, 3)), verbose=0)
    with pytest.raises(ValueError, match=r"X has 10 samples but sample_weight has 4"):
        model.fit(X, y, sample_weight=np.ones(4), verbose=0)
    assert model.optimizer.t == 0 and reg.optimizer.t == 0


@pytest.mark.parametrize("sw,match", [
    (-np.ones(10), r"sample_weight must be finite and >= 0"),
    (np.zeros(10), r"sample_weight sums to 0"),
    (np.full(10, np.nan), r"sample_weight must be finite"),
    (np.ones((10, 1)), r"sample_weight must be 1-D"),
])
def test_bad_sample_weight(backend_name, sw, match):
    X, y = data()
    model = compiled(backend_name)
    with pytest.raises(ValueError, match=match):
        model.fit(X, y, sample_weight=sw, verbose=0)
    assert model.optimizer.t == 0


def test_bad_validation_data(backend_name):
    X, y = data()
    with pytest.raises(ValueError, match=r"validation_data must be a tuple \(X_val, y_val\)"):
        compiled(backend_name).fit(X, y, validation_data=X, verbose=0)


# ------------------------------------------------------------- loss vs output layer
def test_nll_needs_log_softmax(backend_name):
    m = fastmlp.Sequential([Dense(3)], input_dim=4, backend=backend_name)
    with pytest.raises(ValueError, match=r"Loss 'nll' needs an output activation of 'log_softmax', but the model "
                                         r"ends in 'identity': end the model with Activation\('log_softmax'\)"):
        m.compile(loss="nll")
    m2 = fastmlp.Sequential([Dense(3, "softmax")], input_dim=4, backend=backend_name)
    with pytest.raises(ValueError, match=r"ends in 'softmax'"):
        m2.compile(loss="nll")


def test_cross_entropy_rejects_relu_output(backend_name):
    m = fastmlp.Sequential([Dense(3, "relu")], input_dim=4, backend=backend_name)
    with pytest.raises(ValueError, match=r"Loss 'cross_entropy' needs an output activation of 'identity' or "
                                         r"'softmax', but the model ends in 'relu'"):
        m.compile(loss="cross_entropy")
    m2 = fastmlp.Sequential([Dense(3), Activation("relu")], input_dim=4, backend=backend_name)
    with pytest.raises(ValueError, match=r"ends in 'relu'"):
        m2.compile(loss="cross_entropy")


def test_binary_cross_entropy_rejects_tanh_output(backend_name):
    m = fastmlp.Sequential([Dense(1, "tanh")], input_dim=4, backend=backend_name)
    with pytest.raises(ValueError, match=r"Loss 'binary_cross_entropy' needs an output activation of 'identity' "
                                         r"or 'sigmoid'"):
        m.compile(loss="binary_cross_entropy")


def test_poisson_rejects_relu_output(backend_name):
    m = fastmlp.Sequential([Dense(2, "relu")], input_dim=4, backend=backend_name)
    with pytest.raises(ValueError, match=r"Loss 'poisson' needs an output activation of 'identity' or 'exp', "
                                         r"but the model ends in 'relu'.*log-rates"):
        m.compile(loss="poisson")


def test_poisson_negative_targets_raise_before_any_work(backend_name):
    X, _ = data()
    model = compiled(backend_name, loss="poisson", k=2)
    before = model.get_weights()
    Y = np.ones((10, 2))
    Y[6, 1] = -0.5
    with pytest.raises(ValueError, match=r"Loss 'poisson' needs targets >= 0 \(counts or rates\), but y has "
                                         r"-0.5 at row 6, column 1"):
        model.fit(X, Y, verbose=0)
    assert_untouched(model, before)
    with pytest.raises(ValueError, match=r"y_val has -0.5 at row 6"):
        model.fit(X, np.ones((10, 2)), validation_data=(X, Y), verbose=0)
    assert_untouched(model, before)
    with pytest.raises(ValueError, match=r"needs targets >= 0"):
        model.evaluate(X, Y)
    model.fit(X, np.abs(Y), verbose=0)  # zeros and positive rates are fine
    assert model.optimizer.t == 1


def test_cross_entropy_needs_two_units(backend_name):
    m = fastmlp.Sequential([Dense(4, "relu"), Dense(1)], input_dim=4, backend=backend_name)
    with pytest.raises(ValueError, match=r"needs an output layer of at least 2 units.*binary_cross_entropy"):
        m.compile(loss="cross_entropy")


# ------------------------------------------------------------- hyperparameters
@pytest.mark.parametrize("make", [lambda v: SGD(lr=v), lambda v: Adam(lr=v), lambda v: RMSprop(lr=v)])
@pytest.mark.parametrize("value", [0, -1, -0.5, float("nan"), float("inf")])
def test_learning_rate_must_be_positive(make, value):
    with pytest.raises(ValueError, match=rf"lr must be a finite number > 0, got {re.escape(repr(value))}\."):
        make(value)


@pytest.mark.parametrize("name,value", [("batch_size", 0), ("batch_size", -3), ("batch_size", 2.5),
                                        ("epochs", 0), ("epochs", -1)])
def test_batch_size_and_epochs_positive_integers(backend_name, name, value):
    X, y = data()
    model = compiled(backend_name)
    before = model.get_weights()
    with pytest.raises(ValueError, match=rf"{name} must be an integer > 0, got {re.escape(repr(value))}\."):
        model.fit(X, y, verbose=0, **{name: value})
    assert_untouched(model, before)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_l2_must_be_finite(value):
    # a NaN penalty would only surface later as a misleading "diverged: lower the learning rate"
    with pytest.raises(ValueError, match=r"l2 must be .*>= 0"):
        Dense(3, l2=value)


@pytest.mark.parametrize("value", [0, -1, 2.5])
def test_predict_and_evaluate_batch_size_validated(backend_name, value):
    """predict(batch_size=-1) must not return uninitialized memory."""
    model = compiled(backend_name)
    X, y = data()
    with pytest.raises(ValueError, match=rf"batch_size must be an integer > 0, got {re.escape(repr(value))}\."):
        model.predict(X, batch_size=value)
    with pytest.raises(ValueError, match=rf"batch_size must be an integer > 0, got {re.escape(repr(value))}\."):
        model.evaluate(X, y, batch_size=value)


def test_other_hyperparameters():
    with pytest.raises(ValueError, match=r"momentum must be in \[0.0, 1.0\], got -0.1"):
        SGD(momentum=-0.1)
    with pytest.raises(ValueError, match="Nesterov momentum requires momentum > 0"):
        SGD(nesterov=True)
    with pytest.raises(ValueError, match=r"beta1 must be in \[0.0, 1.0\), got 1.0"):
        Adam(beta1=1.0)
    with pytest.raises(ValueError, match=r"rho must be in \[0.0, 1.0\)"):
        RMSprop(rho=1.5)
    with pytest.raises(ValueError, match=r"units must be an integer > 0, got 0"):
        Dense(0)
    with pytest.raises(ValueError, match=r"l2 must be .*>= 0, got -1"):
        Dense(3, l2=-1)
    with pytest.raises(ValueError, match=r"clip_norm must be a finite number > 0, got 0"):
        fastmlp.Sequential([Dense(2)], input_dim=2).compile(loss="mse", clip_norm=0)
    with pytest.raises(ValueError, match=r"dtype must be 'float32' or 'float64', got 'int32'"):
        fastmlp.Sequential([Dense(2)], dtype="int32")
    with pytest.raises(ValueError, match=r"input_dim must be an integer > 0, got 0"):
        fastmlp.Sequential([Dense(2)], input_dim=0)


def test_bad_layer_lists():
    with pytest.raises(ValueError, match="at least one layer"):
        fastmlp.Sequential([])
    with pytest.raises(ValueError, match="at least one Dense layer"):
        fastmlp.Sequential([Activation("relu")])
    with pytest.raises(TypeError, match="Layers must be fastmlp.Dense, fastmlp.Activation, fastmlp.Dropout, "
                                        "fastmlp.BatchNorm, fastmlp.PReLU, fastmlp.Maxout or fastmlp.Residual"):
        fastmlp.Sequential([Dense(2), "relu"])


# ------------------------------------------------------------- unknown names
def test_unknown_activation_lists_valid():
    valid = ", ".join(sorted(fastmlp.activations.ACTIVATIONS))
    with pytest.raises(ValueError, match=re.escape(f"Unknown activation 'rleu'. Valid activations: {valid}.")):
        Dense(3, "rleu")
    with pytest.raises(ValueError, match="Unknown activation 'foo'"):
        Activation("foo")
    assert "elu, exp, gelu, identity, leaky_relu, log_softmax, relu, selu, sigmoid" in valid


def test_unknown_loss_lists_valid():
    m = fastmlp.Sequential([Dense(3)], input_dim=2)
    with pytest.raises(ValueError, match=re.escape("Unknown loss 'hinge'. Valid losses: binary_cross_entropy, "
                                                   "cross_entropy, mse, nll, poisson.")):
        m.compile(loss="hinge")


def test_unknown_initializer_lists_valid():
    with pytest.raises(ValueError, match=re.escape(
            "Unknown initializer 'glorot'. Valid initializers: auto, glorot_normal, glorot_uniform, he_normal, "
            "he_uniform, lecun_normal, lecun_uniform, zeros.")):
        Dense(3, kernel_initializer="glorot")


def test_unknown_optimizer_lists_valid():
    m = fastmlp.Sequential([Dense(3)], input_dim=2)
    with pytest.raises(ValueError, match=r"Unknown optimizer 'adagrad'\..*one of the names: adam, adamw, rmsprop, sgd\."):
        m.compile(loss="mse", optimizer="adagrad")
    with pytest.raises(ValueError, match=r"Unknown optimizer"):
        m.compile(loss="mse", optimizer=42)


def test_unknown_backend_lists_valid():
    with pytest.raises(ValueError, match=r"Unknown backend 'gpu'\. Valid backends: auto, cython, numba, reference\."):
        fastmlp.Sequential([Dense(3)], backend="gpu")


# ------------------------------------------------------------- step activation
def test_step_activation_cannot_be_trained(backend_name):
    m = fastmlp.Sequential([Dense(4, "step"), Dense(2)], input_dim=3, backend=backend_name)
    with pytest.raises(ValueError, match=r"The 'step' activation has a derivative of zero everywhere.*"
                                         r"Use 'sigmoid' or 'tanh'"):
        m.compile(loss="mse")
    m2 = fastmlp.Sequential([Dense(4), Activation("step"), Dense(2)], input_dim=3, backend=backend_name)
    with pytest.raises(ValueError, match=r"'step' activation"):
        m2.compile(loss="mse")


def test_step_activation_predict_without_compile(backend_name):
    m = fastmlp.Sequential([Dense(4, "step")], input_dim=3, dtype="float64", seed=0, backend=backend_name)
    X = np.random.default_rng(0).standard_normal((20, 3))
    out = m.predict(X)
    W, b = m.get_weights()
    assert set(np.unique(out)) == {0.0, 1.0}
    np.testing.assert_array_equal(out, (X @ W + b > 0).astype(float))


# ------------------------------------------------------------- order of calls
def test_fit_before_compile(backend_name):
    m = fastmlp.Sequential([Dense(3)], input_dim=4, backend=backend_name)
    X, y = data()
    with pytest.raises(RuntimeError, match=r"Call model\.compile\(loss=\.\.\., optimizer=\.\.\.\) before fit"):
        m.fit(X, y, verbose=0)
    with pytest.raises(RuntimeError, match=r"Call model\.compile\(\.\.\.\) before evaluate"):
        m.evaluate(X, y)


def test_predict_before_build(backend_name):
    m = fastmlp.Sequential([Dense(3)], backend=backend_name)
    with pytest.raises(RuntimeError, match=r"The model has no weights yet: pass input_dim=\.\.\. or call fit first"):
        m.predict(np.zeros((2, 4)))
    with pytest.raises(RuntimeError, match="no weights yet"):
        m.get_weights()


# ------------------------------------------------------------- divergence
@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning", "ignore:invalid value:RuntimeWarning")
def test_divergence_raises_and_keeps_finite_weights(backend_name):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((32, 4)) * 10
    Y = rng.standard_normal((32, 1)) * 1e6
    m = fastmlp.Sequential([Dense(8, "relu"), Dense(1)], input_dim=4, seed=0, backend=backend_name)
    m.compile(loss="mse", optimizer=SGD(lr=1e6))
    with pytest.raises(TrainingDivergedError, match=r"at epoch \d+, step \d+\..*Try a lower learning rate "
                                                     r"\(now 1e\+06\)"):
        m.fit(X, Y, epochs=50, batch_size=8, verbose=0)
    assert issubclass(TrainingDivergedError, FloatingPointError)
    assert all(np.isfinite(w).all() for w in m.get_weights())
    assert np.isfinite(m._params).all()
    assert np.isfinite(m.predict(X)).all()


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning", "ignore:invalid value:RuntimeWarning")
def test_divergence_in_first_step_names_epoch_1_step_1(backend_name):
    X = np.full((4, 2), 1e20, dtype=np.float32)
    Y = np.full((4, 1), 1e20, dtype=np.float32)
    m = fastmlp.Sequential([Dense(1)], input_dim=2, seed=0, backend=backend_name)  # float32: 1e40 overflows
    m.compile(loss="mse", optimizer=SGD(lr=0.1))
    before = m.get_weights()
    with pytest.raises(TrainingDivergedError, match=r"at epoch 1, step 1\..*learning rate"):
        m.fit(X, Y, epochs=1, batch_size=4, verbose=0)
    for a, b in zip(m.get_weights(), before):
        np.testing.assert_array_equal(a, b)


def test_all_finite_without_a_full_size_temporary():
    from fastmlp._validation import all_finite

    big = np.full((300, 7), np.finfo(np.float32).max, dtype=np.float32)  # the sum overflows
    assert all_finite(big)
    for bad in (np.inf, -np.inf, np.nan):
        x = big.copy()
        x[211, 3] = bad
        assert not all_finite(x)
    pair = np.zeros((5, 2))
    pair[1, 0], pair[3, 1] = np.inf, -np.inf  # sums to NaN, still reported
    assert not all_finite(pair)
    assert all_finite(np.ones((4, 3)))
    assert all_finite(np.empty((0, 3)))
    with pytest.raises(ValueError, match="infinity at row 211, column 3"):
        x = big.copy()
        x[211, 3] = np.inf
        m = fastmlp.Sequential([fastmlp.Dense(2)], input_dim=7)
        m.compile(loss="mse", optimizer=fastmlp.optim.SGD(0.1))
        m.predict(x)


# ------------------------------------------------------------- one optimizer, two models
def test_one_optimizer_for_two_models_is_refused(backend_name):
    # The state of an optimizer belongs to the parameters of one model: compiling a second
    # model of another size with the same instance used to make the native loops read and
    # write past the end of the state (a segfault). It is a clear error, before any work.
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((40, 6)), rng.integers(0, 3, 40)
    opt = Adam(lr=1e-2)
    small = fastmlp.Sequential([Dense(4, activation="relu"), Dense(3)], input_dim=6, seed=0, backend=backend_name)
    big = fastmlp.Sequential([Dense(64, activation="relu"), Dense(3)], input_dim=6, seed=0, backend=backend_name)
    small.compile(loss="cross_entropy", optimizer=opt)
    small.fit(X, y, epochs=1, batch_size=8, verbose=0)
    before = big.get_weights()
    with pytest.raises(ValueError, match=r"already the optimizer of another model.*Adam\(\*\*optimizer.get_config\(\)\)"):
        big.compile(loss="cross_entropy", optimizer=opt)
    assert big.optimizer is None and big._loss is None  # the failed compile changed nothing
    for a, b in zip(big.get_weights(), before):
        np.testing.assert_array_equal(a, b)
    big.compile(loss="cross_entropy", optimizer=Adam(**opt.get_config()))  # the cure the message names
    big.fit(X, y, epochs=1, batch_size=8, verbose=0)
    small.compile(loss="cross_entropy", optimizer=opt)  # the owner may compile again with it
    small.fit(X, y, epochs=1, batch_size=8, verbose=0)
    # once the owner is gone, the instance is free
    del small
    import gc

    gc.collect()
    other = fastmlp.Sequential([Dense(5), Dense(3)], input_dim=6, seed=0, backend=backend_name)
    other.compile(loss="cross_entropy", optimizer=opt)
    assert other.optimizer is opt and opt.state is None


def test_an_optimizer_state_of_another_size_is_refused_at_fit(backend_name):
    # Setting model.optimizer by hand bypasses compile's check; fit refuses state made for
    # other parameters before any work, and the model is left as it was.
    rng = np.random.default_rng(1)
    X, y = rng.standard_normal((40, 6)), rng.integers(0, 3, 40)
    a = fastmlp.Sequential([Dense(4), Dense(3)], input_dim=6, seed=0, backend=backend_name)
    b = fastmlp.Sequential([Dense(9), Dense(3)], input_dim=6, seed=0, backend=backend_name)
    a.compile(loss="cross_entropy", optimizer="sgd")
    b.compile(loss="cross_entropy", optimizer=SGD(lr=0.1, momentum=0.9))
    b.fit(X, y, epochs=1, verbose=0)
    a.optimizer = b.optimizer
    params, state = a._params.copy(), b.optimizer.state["buf"].copy()
    rng_state = a._rng.bit_generator.state
    with pytest.raises(ValueError, match=r"state \(buf\) was made for another model: it has \d+ values, this "
                                         r"model \d+ parameters"):
        a.fit(X, y, epochs=1, verbose=0)
    np.testing.assert_array_equal(a._params, params)
    np.testing.assert_array_equal(b.optimizer.state["buf"], state)
    assert a._rng.bit_generator.state == rng_state


def test_copies_of_a_model_own_their_optimizer(backend_name):
    import copy
    import pickle

    rng = np.random.default_rng(2)
    X, y = rng.standard_normal((30, 6)), rng.integers(0, 3, 30)
    m = fastmlp.Sequential([Dense(4), Dense(3)], input_dim=6, seed=0, backend=backend_name)
    m.compile(loss="cross_entropy", optimizer="adam")
    m.fit(X, y, epochs=1, verbose=0)
    for twin in (copy.deepcopy(m), pickle.loads(pickle.dumps(m))):
        assert twin.optimizer is not m.optimizer and twin.optimizer._owner() is twin
        twin.compile(loss="cross_entropy", optimizer=twin.optimizer)  # its own: accepted
        twin.fit(X, y, epochs=1, verbose=0)
