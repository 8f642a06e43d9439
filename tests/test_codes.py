"""One owner for every code: fastmlp._native.codes, seen the same by every layer."""
import numpy as np
import pytest

import fastmlp
from fastmlp import activations, losses, optim
from fastmlp._native import codes, plan
from fastmlp._native.codes import Act, Loss, Opt, Unit

from conftest import BACKENDS


def test_python_layers_use_the_enums():
    for name, (code, _, _) in activations.ACTIVATIONS.items():
        assert code is Act[name.upper()], name
        assert getattr(activations, name.upper()) is Act[name.upper()]
    assert {spec.kind for spec in losses.LOSSES.values()} | {Loss.CE_ONEHOT} == set(Loss)
    assert losses.LOSSES["cross_entropy"].onehot_kind is Loss.CE_ONEHOT
    assert (optim.SGD.kind, optim.RMSprop.kind, optim.Adam.kind) == (Opt.SGD, Opt.RMSPROP, Opt.ADAM)
    assert all(isinstance(spec.kind, Loss) for spec in losses.LOSSES.values())


def test_codes_are_distinct_and_stable():
    for enum in codes.ENUMS:
        values = [int(m) for m in enum]
        assert len(values) == len(set(values)), enum
    # saved models and compiled builds refer to them by number: these must never change
    assert [int(a) for a in Act] == list(range(14))
    assert [(u.name, int(u)) for u in Unit] == [("ACTIVATION", 0), ("DENSE", 1), ("DROPOUT", 2), ("BATCHNORM", 3),
                                                ("PRELU", 4), ("MAXOUT", 5), ("RES_BEGIN", 6), ("RES_ADD", 7)]
    assert [(o.name, int(o)) for o in Opt] == [("NONE", -1), ("SGD", 0), ("RMSPROP", 1), ("ADAM", 2)]
    assert int(Loss.POISSON) == 5


def test_records_have_a_field_per_parameter():
    assert plan.UNIT_DTYPE.names == tuple(name for name, _ in codes.UNIT_FIELDS)
    assert set(plan.UNIT_DTYPE.names) >= {"alpha", "l2", "rate", "eps", "momentum"}
    assert plan.HYPER_DTYPE.names == tuple(name for name, _ in codes.HYPER_FIELDS)


def test_compiled_modules_agree():
    runtime = pytest.importorskip("fastmlp._native.runtime")
    built = runtime.codes()
    for enum in codes.ENUMS:
        assert built[enum.__name__] == {m.name: int(m) for m in enum}, enum.__name__
    assert runtime.PHASES == tuple(p.name.lower().replace("_", " ") for p in codes.Phase)


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_backend_reads_the_records_by_name(backend):
    # a record's named fields reach each backend's loop: a dropout rate in `rate`, batch-norm
    # eps and momentum in `eps` and `momentum`, an activation's parameter in `alpha`; the
    # same model trains to the same weights in every backend
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((40, 5)), rng.integers(0, 3, 40)
    layers = [fastmlp.Dense(6), fastmlp.Activation("leaky_relu"), fastmlp.Dropout(0.3),
              fastmlp.Dense(6, use_bias=False), fastmlp.BatchNorm(momentum=0.3, eps=1e-3), fastmlp.Dense(3)]

    def train(name):
        m = fastmlp.Sequential(layers, input_dim=5, dtype="float64", seed=1, backend=name)
        m.compile(loss="cross_entropy", optimizer="adam")
        m.fit(X, y, epochs=2, batch_size=8, verbose=0)
        return m

    m = train(backend)
    rec = m._records(m._train_acts, 8, dropout=True)
    assert list(rec["kind"]) == [Unit.DENSE, Unit.DROPOUT, Unit.DENSE, Unit.BATCHNORM, Unit.DENSE]
    assert rec["alpha"][0] == 0.01 and rec["rate"][1] == 0.3
    assert (rec["eps"][3], rec["momentum"][3]) == (1e-3, 0.3)
    for a, b in zip(m.get_weights(), train("reference").get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
