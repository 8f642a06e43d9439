"""fit(class_weight=...): Keras' row weights on the sample_weight path, and its errors."""
import numpy as np
import pytest

import fastmlp
from fastmlp import Dense


def data(n=60, d=5, k=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)), rng.integers(0, k, n)


def model(backend, k=3, loss="cross_entropy", dtype="float64", opt="adam"):
    m = fastmlp.Sequential([Dense(8, activation="tanh"), Dense(k)], input_dim=5, seed=3, backend=backend,
                           dtype=dtype)
    m.compile(loss, opt)
    return m


def trained(backend, y, k=3, loss="cross_entropy", **fit):
    X, _ = data()
    m = model(backend, k, loss)
    history = m.fit(X, y, epochs=3, batch_size=16, verbose=0, **fit)
    return m.get_weights(), history.history["loss"]


def assert_same(a, b):
    for u, v in zip(a[0], b[0]):
        np.testing.assert_array_equal(u, v)
    assert a[1] == b[1]


def test_labels_as_sample_weight(backend_name):
    _, y = data(k=2)
    assert_same(trained(backend_name, y, k=2, class_weight={0: 2, 1: 1}),
                trained(backend_name, y, k=2, sample_weight=np.where(y == 0, 2.0, 1.0)))


def test_label_without_key_weighs_one_and_sample_weight_multiplies(backend_name):
    _, y = data(k=3)
    sw = np.linspace(0.5, 2.0, y.size)
    rows = np.array([0.25, 3.0, 1.0])[y]  # label 2 has no key: 1.0, as in Keras
    assert_same(trained(backend_name, y, class_weight={0: 0.25, 1: 3.0}, sample_weight=sw),
                trained(backend_name, y, sample_weight=rows * sw))
    # an empty mapping changes nothing (Keras ignores it)
    assert_same(trained(backend_name, y, class_weight={}), trained(backend_name, y))


def test_one_hot_rows_use_their_argmax(backend_name):
    _, y = data(k=3)
    onehot = np.eye(3)[y]
    assert_same(trained(backend_name, onehot, class_weight={0: 1.5, 2: 0.5}),
                trained(backend_name, onehot, sample_weight=np.array([1.5, 1.0, 0.5])[y]))


def test_binary_cross_entropy_one_unit(backend_name):
    _, y = data(k=2)
    assert_same(trained(backend_name, y.astype(float), k=1, loss="binary_cross_entropy",
                        class_weight={1: 4.0}),
                trained(backend_name, y.astype(float), k=1, loss="binary_cross_entropy",
                        sample_weight=np.where(y == 1, 4.0, 1.0)))


def test_validation_split_weighs_the_training_rows(backend_name):
    _, y = data(k=2)
    kw = dict(validation_split=0.25)
    a = trained(backend_name, y, k=2, class_weight={0: 3.0}, **kw)
    b = trained(backend_name, y, k=2, sample_weight=np.where(y == 0, 3.0, 1.0), **kw)
    assert_same(a, b)


def state(m):
    return ([w.copy() for w in m.get_weights()], m._rng.bit_generator.state, m.optimizer.t,
            None if m.optimizer.state is None else {k: v.copy() for k, v in m.optimizer.state.items()})


@pytest.mark.parametrize("class_weight,error,match", [
    ({0: 1.0, 3: 2.0}, ValueError, r"class_weight has the key 3, which is not a label of this model: the labels "
                                   r"are the integers 0\.\.2 \(one per output unit\)"),
    ({-1: 1.0}, ValueError, r"the key -1, which is not a label"),
    ({"cat": 1.0}, ValueError, r"the key 'cat', which is not a label"),
    ({True: 1.0}, ValueError, r"the key True, which is not a label"),
    ({1.0: 2.0}, ValueError, r"the key 1\.0, which is not a label"),
    ({0: -1.0}, ValueError, r"class_weight\[0\] must be a finite number >= 0, got -1\.0"),
    ({1: np.nan}, ValueError, r"class_weight\[1\] must be a finite number >= 0, got nan"),
    ({1: np.inf}, ValueError, r"class_weight\[1\] must be a finite number >= 0, got inf"),
    ({1: "2"}, ValueError, r"class_weight\[1\] must be a finite number >= 0, got '2'"),
    ([2.0, 1.0, 1.0], TypeError, r"class_weight must be a dict \{label: weight\}, got list"),
    ({0: 0, 1: 0.0, 2: 0}, ValueError, r"The row weights \(class_weight\) are 0 on every training row"),
])
def test_bad_class_weight_changes_nothing(backend_name, class_weight, error, match):
    X, y = data()
    m = model(backend_name)
    m.fit(X, y, epochs=1, verbose=0)
    before = state(m)
    with pytest.raises(error, match=match):
        m.fit(X, y, class_weight=class_weight, verbose=0)
    after = state(m)
    for a, b in zip(after[0], before[0]):
        np.testing.assert_array_equal(a, b)
    assert after[1:3] == before[1:3]
    for name in before[3]:
        np.testing.assert_array_equal(after[3][name], before[3][name])


def test_errors_of_the_combinations(backend_name):
    X, y = data(k=2)
    m = model(backend_name, k=2)
    with pytest.raises(ValueError, match=r"\(class_weight times sample_weight\) are 0 on every training row"):
        m.fit(X, y, class_weight={0: 0.0}, sample_weight=(y == 0).astype(float), verbose=0)
    # zero on every row that validation_split leaves for training
    y = np.r_[np.zeros(45, int), np.ones(15, int)]
    with pytest.raises(ValueError, match=r"are 0 on every training row"):
        m.fit(X, y, class_weight={0: 0.0}, validation_split=0.25, verbose=0)
    assert not m.built or m.optimizer.state is None  # nothing trained, no state made
    m1 = model(backend_name, k=1, loss="binary_cross_entropy")
    with pytest.raises(ValueError, match=r"the key 2, which is not a label of this model: the labels are the "
                                         r"integers 0 and 1 \(one output unit\)"):
        m1.fit(X, y.astype(float), class_weight={2: 1.0}, verbose=0)


@pytest.mark.parametrize("loss", ["mse", "poisson"])
def test_regression_losses_refuse_it(backend_name, loss):
    X, y = data(k=2)
    m = model(backend_name, k=1, loss=loss)
    with pytest.raises(ValueError, match=rf"class_weight applies to classification losses .* not to '{loss}'; "
                                         "weigh the rows with sample_weight instead"):
        m.fit(X, y.astype(float), class_weight={0: 1.0}, verbose=0)
    assert m.optimizer.state is None
