"""Training on the soft risk with τ schedules; logs; non-finite stop."""

import copy
import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

from softhard import (
    FunctionTeacher,
    Gaussian,
    TauSchedule,
    TrainingStopped,
    binary_problem,
    make_student,
    train,
    voronoi3_problem,
)


def test_annealed_lbfgs_recovers_the_teacher():
    prob = binary_problem()
    student = prob.student(seed=1)
    before = copy.deepcopy(student.state_dict())
    res = train(student, prob.teacher, prob.law, schedule=TauSchedule("geometric", 0.3, 0.9, 0.05), method="lbfgs",
                steps=30, n=4096, log_every=10)
    assert res.status == "completed" and res.steps == 30
    assert all(torch.equal(v, student.state_dict()[k]) for k, v in before.items())  # the input is not modified
    first, last = res.log.rows[0], res.log.rows[-1]
    assert [r["step"] for r in res.log.rows] == [0, 10, 20, 30]
    assert last["tau"] == pytest.approx(max(0.05, 0.3 * 0.9 ** 29))
    assert last["expert_error"] < 0.01 < first["expert_error"]
    assert last["misrouted_mass"] < 0.01
    assert last["soft_risk"] < first["soft_risk"] / 50
    assert all(r[c] >= 0 for r in res.log.rows for c in res.log.columns if c.endswith("_stderr"))


def test_logged_boundary_mass_is_beta_2tau():
    """At step 0 the log's β(2τ) is the boundary mass of the initial router: exact by (3.11)."""
    prob = binary_problem()
    student = prob.student(seed=2)
    tau = 0.1
    res = train(student, prob.teacher, prob.law, schedule=tau, method="gd", steps=0, n=1 << 15, seed=4)
    W, b = student.router.effective()
    m_g, s = float((b[0] - b[1]).detach()), float(torch.linalg.norm(W[0] - W[1]).detach())
    exact = norm.cdf((2 * tau - m_g) / s) - norm.cdf((-2 * tau - m_g) / s)
    row = res.log.rows[0]
    assert abs(row["boundary_mass"] - exact) <= 5 * row["boundary_mass_stderr"]
    assert row["soft_risk"] >= 0 and row["gate_entropy"] <= math.log(2)


def test_mass_schedule_holds_the_target():
    prob = voronoi3_problem()
    sched = TauSchedule("mass", tau=1.0, tau_min=1e-4, target_mass=0.1)
    res = train(prob.student(seed=3), prob.teacher, prob.law, schedule=sched, method="gd", steps=5, n=4096)
    for r in res.log.rows[1:]:  # τ is set from the margins before each step; one step moves them a little
        assert abs(r["boundary_mass"] - 0.1) < 0.02
    assert len({r["tau"] for r in res.log.rows}) > 1


def test_sgd_is_reproducible_and_uses_fresh_batches():
    prob = binary_problem()
    st = prob.student(seed=4)
    kw = dict(schedule=0.2, method="sgd", steps=6, n=1024, batch=256, log_every=3)
    a = train(st, prob.teacher, prob.law, seed=1, **kw)
    b = train(st, prob.teacher, prob.law, seed=1, **kw)
    c = train(st, prob.teacher, prob.law, seed=2, **kw)
    assert a.log.rows == b.log.rows
    assert a.log.rows[-1]["soft_risk"] != c.log.rows[-1]["soft_risk"]
    assert a.log.rows[-1]["soft_risk"] < a.log.rows[0]["soft_risk"]


def test_non_finite_loss_stops_and_keeps_the_last_good_parameters():
    prob = binary_problem()
    kw = dict(schedule=0.1, method="gd", lr=1e6, n=512, log_every=50)
    with pytest.warns(TrainingStopped, match=r"non-finite at step \d+ .*kept the parameters of step \d+"):
        res = train(prob.student(seed=1), prob.teacher, prob.law, steps=200, **kw)
    assert res.status == "stopped" and 0 < res.steps < 200
    assert all(bool(torch.isfinite(p).all()) for p in res.moe.parameters())
    good = train(prob.student(seed=1), prob.teacher, prob.law, steps=res.steps, **kw)  # the same run, stopped in time
    assert good.status == "completed"
    assert all(torch.equal(p, q) for p, q in zip(res.moe.parameters(), good.moe.parameters()))
    assert res.log.meta["status"] == "stopped" and res.message in res.log.meta["message"]


def test_teacher_without_cells_logs_no_recovery():
    law = Gaussian.standard(2)
    res = train(make_student(2, 2, seed=0), FunctionTeacher(lambda x: x[:, 0].abs()), law, schedule=0.2,
                method="gd", steps=2, n=256)
    assert "expert_error" not in res.log.columns and np.isfinite(res.log.rows[-1]["hard_risk"])


def test_bad_input():
    prob = binary_problem()
    st = prob.student()
    with pytest.raises(ValueError, match="'method' parameter of train must be one of"):
        train(st, prob.teacher, prob.law, method="adam")
    with pytest.raises(ValueError, match="'schedule' parameter of train must be a float in \\(0, inf\\)"):
        train(st, prob.teacher, prob.law, schedule=-1.0)
    with pytest.raises(ValueError, match="'kind' parameter of TauSchedule"):
        TauSchedule("cosine")
    with pytest.raises(ValueError, match="'target_mass' parameter of TauSchedule"):
        TauSchedule("mass", target_mass=1.5)
    with pytest.raises(TypeError, match="'teacher' parameter of train must be a softhard Teacher"):
        train(st, lambda x: x, prob.law)
