"""Write the table "paper object → function → check → value" into docs/paper_objects.md (between the
``objects:begin``/``objects:end`` markers), computing every value from the public API on small fixed examples, and
checking that every named test exists, so that the table cannot drift from the code.

Usage: ``python scripts/paper_objects.py [--check]`` (``--check``: exit 1 if the table in the docs differs). Takes
about a minute on one core (the ω(τ) and Γ rows run the landscape functions).
"""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path

from doc_block import update

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "paper_objects.md"
BEGIN, END = "<!-- objects:begin (scripts/paper_objects.py) -->", "<!-- objects:end -->"
HEADER = "| object | what | function(s) | check (tests/) | value on the example |\n|---|---|---|---|---|"


def g(x, digits=4):
    return f"{float(x):.{digits}g}"


def rows():
    import softhard as sh
    from softhard.closed.balance import contrast_on_separator
    from softhard.closed.risk import risk_exact

    F = torch.float64
    law2 = sh.Gaussian.standard(2)
    r71 = sh.LinearRouter.binary([1.0, 0.0], b=0.2)  # g = x_1 + 0.2 ~ N(0.2, 1)
    moe71 = sh.MoE(r71, sh.LinearExperts([[0.0, 1.0], [0.0, -1.0]]))  # the §7.1 design, offset 0.2
    W3 = torch.tensor([[1.0, 0.0, 0.2], [-0.5, 0.8, 0.0], [-0.5, -0.8, -0.2]], dtype=F)
    r3 = sh.LinearRouter(W3, [0.1, 0.0, -0.1])
    law3 = sh.Gaussian([0.1, 0.0, 0.2], [[1, 0.2, 0], [0.2, 1, 0.1], [0, 0.1, 0.5]])
    a = torch.tensor([[1.0, 0.2, -0.5]], dtype=F)
    L71, L0 = risk_exact(moe71, law2, [0.1])
    bp, vp = sh.binary_problem(), sh.voronoi3_problem()
    st4 = vp.student(seed=4)
    sad = bp.saddle()

    def gamma():
        res = sh.uniform_gap(bp.teacher_student(), bp.teacher, bp.law, sh.random_family(bp.teacher_student(), 24, 0.3, 0),
                             [0.0025, 0.005, 0.01, 0.02, 0.04], n=1 << 17, seed=0)
        return (f"binary family (24 members): α = {res.alpha:.3f} ± {res.alpha_stderr:.3f} (MC, seed 0), exact "
                f"{res.alpha_exact:.4f}")

    def argmin():
        teacher = sh.PartitionTeacher(sh.MoE(sh.LinearRouter.binary(torch.tensor([1.0, 0.0], dtype=F)),
                                             sh.LinearExperts([[1.0, 1.0], [-1.0, 1.0]], [0.0, 0.0])))
        st = sh.MoE(sh.LinearRouter([[0.5, 0.15], [-0.5, -0.15]], [0.0, 0.0], trainable=True),
                    sh.LinearExperts([[1.2, 0.9], [-0.8, 1.1]], [0.1, -0.2], trainable=True))
        eta = torch.zeros(12, dtype=F)
        eta[4], eta[5] = 0.5, -0.5
        r = sh.argmin_path(st, teacher, law2, eta, [0.2, 0.1, 0.05, 0.025, 0.0125], grid=21)
        rel = (r.t_soft[-1] - r.t_hard) / r.predicted[-1] - 1
        return (f"hinge teacher, bias segment: rate {r.rate:.2f}; displacement at τ = 0.0125 off the first-order "
                f"prediction by {rel:+.1%}")

    def transfer():
        tr = sh.transfer_modulus(sad, bp.teacher, bp.law, [0.1, 0.05, 0.025], nodes=4, check=False)
        return (f"binary saddle, τ = 0.1→0.025: ω₁ {tr.omega_grad[0]:.2g}→{tr.omega_grad[-1]:.2g} (rate "
                f"{tr.rate_grad:.2f}), ω₂ {tr.omega_hess[0]:.2g}→{tr.omega_hess[-1]:.2g} (rate {tr.rate_hess:.2f})")

    def saddle():
        e, _ = sh.profiled_min_eigenvalue(sad, bp.teacher, bp.law)
        return f"binary saddle: smallest profiled eigenvalue {e:.3f} (< 0: a hard saddle)"

    def mis():
        x = sh.draw(sh.Uniform([-2.0, -2.0], [2.0, 2.0]), 1 << 14, 5)
        res = sh.misrouting_bound(st4, vp.teacher, tau=0.1, eps=0.02, eta=1.5, B=12.0, sample=x)
        return (f"Voronoi student 4, τ = 0.1, ε = 0.02, η = 1.5, B = 12 on [−2, 2]² (mass with |h_k| > B: "
                f"{res.bound_violated.value:g}): μ(M) = {res.mass.value:.3f} ≤ (5.13) {res.mass_bound:.3g}")

    def sym():
        M = sh.reduced_operator(torch.eye(2, dtype=F), torch.tensor([1.0, 0.0], dtype=F),
                                torch.tensor([1.0, 2.0], dtype=F), 0.1)
        s = sh.operator_spectrum(M, torch.tensor([1.0, 0.0], dtype=F))
        return f"Σ = I₂, u = e₁, c = (1, 2), τ = 0.1: eigenvalues {', '.join(g(v, 5) for v in s.values)} (√(2/π)/τ = {g(math.sqrt(2 / math.pi) / 0.1, 5)}, half across)"

    psi = float(sh.coarea_constant(r71, law2).value)
    return [
        ("§2", None),
        ("(2.1), (2.5), (2.11)", "risks L_τ, L_0", "`risk_exact`, `risk_gap`, `hard_risk`", "test_gap.py::test_risk_gap_matches_exact_quadrature, test_shape.py::test_exact_hard_risk_matches_monte_carlo",
         f"§7.1 design (g = x₁ + 0.2): L_τ = {g(L71[0])} at τ = 0.1, L_0 = {g(L0)}"),
        ("(2.2)", "router logits", "`LinearRouter`, `UnitLinearRouter`, `MLPRouter`", "test_models.py::test_linear_router_logits_by_hand", "computed (no scalar)"),
        ("(2.3)", "softmax gate", "`softmax_gate`", "test_gates.py::test_softmax_hand_values",
         "a = (1, 0.2, −0.5), τ = 0.5: π = (" + ", ".join(g(v) for v in sh.softmax_gate(a, 0.5)[0]) + ")"),
        ("(2.4)", "soft predictor", "`MoE.soft`, `model.moe.soft_from`", "test_models.py::test_soft_and_hard_predictions_by_hand", "computed (no scalar)"),
        ("(2.6)", "top-two margin Δ", "`top_two_margin`", "test_gates.py::test_margins_hand_values", f"a as above: {g(sh.top_two_margin(a)[0])}"),
        ("(2.7), (2.8)", "winning set, tie set", "only through `hard_winner` (lowest index wins)", "test_models.py::test_hard_prediction_lowest_index_wins_a_tie", "documented: sets, not numbers"),
        ("(2.9), (2.10)", "hard winner, hard predictor", "`hard_winner`, `hard_gate`, `MoE.hard`", "test_gates.py::test_hard_gate_one_hot_lowest_index_wins", f"a as above: {int(sh.hard_winner(a)[0])}"),
        ("(2.12)", "pairwise separation δ", "`pairwise_separation`", "test_gates.py::test_margins_against_brute_force", f"a as above: {g(sh.pairwise_separation(a)[0])}"),
        ("(2.13)", "top-two profile β(w)", "`boundary_mass`", "test_mass.py::test_binary_beta_matches_3_11", f"g ~ N(0.2, 1): β(0.2) = {g(sh.boundary_mass(r71, law2, 0.2).value)}"),
        ("(2.14)", "pairwise profile β_pair(w)", "`boundary_mass(kind='pairwise')`", "test_mass.py::test_profiles_are_monotone_and_ordered",
         f"K = 3 example: β(0.2) = {g(sh.boundary_mass(r3, law3, 0.2).value)} ≤ β_pair(0.2) = {g(sh.boundary_mass(r3, law3, 0.2, kind='pairwise').value)}"),
        ("(2.15)", "width w_{τ,ε}", "`tolerance_width`", "test_gates.py::test_tolerance_width_hand_values", f"τ = 0.1, ε = 1/(1+e²): {g(sh.tolerance_width(0.1, 1 / (1 + math.e ** 2)))}"),
        ("(2.16), Lemma 4.1", "softmax concentration", "`concentration_bound`, `tail_sum`", "test_gates.py::test_lemma_4_1", f"a as above, τ = 0.5: 1 − π_max = {g(1 - sh.softmax_gate(a, 0.5).max())} ≤ {g(sh.concentration_bound(a, 0.5)[0])}"),
        ("symmetries", "relabelling, gauge", "`ParamSpace.permute`, `null_directions`", "test_landscape.py::test_relabelling_and_gauge_leave_the_model_unchanged", "computed (exact invariance)"),
        ("§3", None),
        ("(3.1), (3.2)", "score g_ij, surface Σ_ij", "`score_difference`, `pair_score`; Σ_ij only through its integrals", "test_models.py::test_score_difference_and_gradient_linear", "computed (no scalar)"),
        ("Remark 3.3", "π₁ = σ(g/τ)", "`softmax_gate`, `tolerance_width`", "test_gates.py::test_binary_tolerance_equivalence", "property-tested"),
        ("Assumption 3.4", "regular interface", "`interface_diagnostic`", "test_coarea.py::test_interface_diagnostic_flat_and_regular",
         f"g ~ N(0.2, 1): {sh.interface_diagnostic(r71, law2, n=1 << 14).verdict}"),
        ("(3.5), (3.6)", "slab events, their union", "`boundary_mass(kind='pairwise')` at w_{τ,ε}", "test_mass.py::test_profiles_equal_a_brute_force_count_on_the_same_sample", "as (2.14)"),
        ("(3.8)", "level-set profile ψ_ij(s), s ≠ 0 too", "`level_set_profile` (exact, kernel); `closed.boundary.pair_density`", "test_coarea.py::test_level_set_profile_at_nonzero_levels",
         f"g ~ N(0.2, 1): ψ(0) = {g(psi)}, ψ(0.5) = {g(sh.level_set_profile(r71, law2, 0.5).value)}"),
        ("Prop. 3.5", "C_Σ = ψ(0) (binary), β(w) = 2wC_Σ + o(w)", "`interface_constant`", "test_gaussian.py::test_interface_constant_exact", f"K = 3 example: C_Σ = {g(sh.interface_constant(r3, law3).value)}"),
        ("Lemma 3.6", "ψ_ij(0)", "`coarea_constant`", "test_coarea.py::test_coarea_constant_exact_and_kernel", f"K = 3 example, pair (0, 2): {g(sh.coarea_constant(r3, law3, (0, 2)).value)}"),
        ("(3.9)", "Σ_{i<j} ψ_ij(0)", "`coarea_sum`", "test_registry.py::test_registered_method_agrees_with_the_known_value", f"K = 3 example: {g(sh.coarea_sum(r3, law3).value)}"),
        ("Prop. 3.7", "β ≤ β_pair ≤ C_1 w on (0, w0]", "`margin_slope_constant`", "test_bounds.py::test_margin_slope_constant_bounds_beta_and_tends_to_2_psi0",
         f"g ~ N(0.2, 1), w0 = 0.5: C_1 = {g(sh.margin_slope_constant(r71, law2, 0.5))} (2ψ(0) = {g(2 * psi)})"),
        ("Ex. 3.8, (3.11)–(3.14)", "binary linear-Gaussian β, ψ(0)", "`boundary_mass_exact`, `pair_density_at_zero`", "test_gaussian.py::test_binary_mass_is_3_11_and_matches_mc", f"ψ(0) = φ(0.2) = {g(psi)}"),
        ("[beyond] K experts", "β by orthant probabilities", "`boundary_mass_exact`", "test_gaussian.py::test_k3_orthant_formula_matches_independent_mc", "as (2.14)"),
        ("§4", None),
        ("Assumption 4.2", "margin tail μ(Δ ≤ t) ≤ C_Δ t^α", "`margin_tail`, `fit_margin_tail`", "test_bounds.py::test_fit_margin_tail_recovers_a_power_law",
         f"g ~ N(0.2, 1): α = {g(sh.margin_tail(r71, law2, n=1 << 16).alpha, 3)} (fit, n = 2¹⁶)"),
        ("Assumption 4.3", "|Y| ≤ B_Y, |h_k| ≤ B_h", "checked on every sample by `gap_certificate`", "test_bounds.py::test_gap_certificate_checks_its_bounds", "documented (a hypothesis)"),
        ("Cor. 4.4", "|L_τ − L_0| ≤ 8B²(K−1)(C_1τ + e^{−w0/τ})", "`corollary44_bound`", "test_bounds.py::test_corollary44_bound_holds_against_the_exact_gap",
         f"g ~ N(0.2, 1), B = 1, w0 = 0.5, τ = 0.01: {g(sh.corollary44_bound(r71, law2, [0.01], B=1.0, w0=0.5)[0])}"),
        ("Thm. 4.5", "C = 4B_h(B_Y+B_h)(K−1)C_ΔΓ(α+1); certificates", "`theorem45_constant`, `gap_certificate`, `local_gap_certificate`, `cauchy_schwarz_bound`", "test_bounds.py::test_bounded_variant_theorem_and_certificate",
         f"C_Δ = 0.8, α = 1, B = 1, K = 2: C = {g(sh.theorem45_constant(0.8, 1.0, 1.0, 1.0, 2))}"),
        ("Thm. 4.6", "—", "none", "—", "not restated in shared/paper.md: not computable here"),
        ("[beyond] G_1", "L_τ − L_0 = G_1τ + o(τ)", "`gap_slope`, `gap_slope_exact`", "test_gap.py::test_gap_slope_binary_both_signs", f"§7.1 design: G_1 = {g(sh.gap_slope(moe71, law2).value)}"),
        ("[beyond] entropy", "E[H(π)] = τπ²/3·C_Σ + o(τ)", "`entropy_slope`, `gate_entropy_mean`", "test_gap.py::test_entropy_slope", f"g ~ N(0.2, 1): {g(sh.entropy_slope(r71, law2).value)}"),
        ("Thm. 4.7", "sup_F |L_τ − L_0| → 0 (exponent, honest error, exact)", "`uniform_gap`", "test_landscape.py::test_uniform_gap_exponent", gamma()),
        ("Thm. 4.7", "argmin L_τ → argmin L_0 (a rule that can fail)", "`argmin_path`", "test_landscape.py::test_argmin_path_moves_at_the_predicted_rate", argmin()),
        ("§5", None),
        ("(5.1), (5.2)", "partition teacher, f*", "`PartitionTeacher`", "test_teacher.py::test_voronoi_cells_are_nearest_centres", "computed (no scalar)"),
        ("(5.3)", "L_τ = E(f* − f_τ)² + Eξ²", "`Objective`, `risk_decomposition`", "test_teacher.py::test_decomposition_lemma55_and_prop58", "computed"),
        ("(5.4), (5.5)", "ambiguity region, mass m_ε(τ)", "`ambiguity_mass`", "test_mass.py::test_binary_ambiguity_mass_matches_3_11", f"g ~ N(0.2, 1), τ = 0.1: {g(sh.ambiguity_mass(r71, law2, 0.1).value)}"),
        ("Remark 5.4", "μ(Δ < w) ≤ m_ε ≤ μ(Δ < w + τ log(K−1))", "`ambiguity_mass`, `boundary_mass`", "test_mass.py::test_sandwich_on_one_sample_and_k2_equality", "property-tested"),
        ("Lemma 5.5", "ambiguity/interior split", "`risk_decomposition`", "test_teacher.py::test_decomposition_lemma55_and_prop58", "computed"),
        ("Lemma 5.7", "m_ε(τ) ≤ C_ετ", "`lemma57_constant`", "test_bounds.py::test_lemma57_constant_against_the_ambiguity_mass",
         f"g ~ N(0.2, 1), ε = 1/(1+e²): C_ε = {g(sh.lemma57_constant(r71, law2))} (first order)"),
        ("Prop. 5.8", "interior bound on G_k", "`risk_decomposition` (`cell_bound`)", "test_teacher.py::test_decomposition_lemma55_and_prop58", "computed"),
        ("Prop. 5.10, (5.7), (5.8)", "shape derivative, loss contrast, invaded-side trace", "`shape_gradient`, `shape_derivative`", "test_shape.py::test_shape_gradient_matches_finite_differences", "checked to 2e-9 relative against FD"),
        ("Prop. 5.10 (2nd order)", "second variation of L_0", "`shape_hessian`, `shape_hessian_matrix`, `hard_derivatives`", "test_shape.py::test_shape_hessian_matches_finite_differences", "checked to 1e-6 against Richardson FD (K = 2, 3)"),
        ("profiled L_0", "min_θ L_0(θ, φ)", "`profiled_hard_risk`", "test_shape.py::test_profiled_hard_risk_exact_matches_monte_carlo", f"binary saddle: {g(sh.profiled_hard_risk(sad.router, bp.teacher, bp.law).risk.value)}"),
        ("Assumption 5.11, (5.9)", "admissible matching, η, c₀", "`admissible_matching`, `recovery`", "test_teacher.py::test_admissible_matching_exact_against_sampling",
         f"Voronoi student 4, η = 0.5: σ = {sh.admissible_matching(st4, vp.teacher, vp.law, 0.5, method='exact').sigma}, c₀ = {g(sh.admissible_matching(st4, vp.teacher, vp.law, 0.5, method='exact').c0.value)}"),
        ("Assumption 5.12", "realized velocities V = (∂g·η)/|∇g|", "`shape_derivative` takes any η", "test_shape.py::test_directional_derivative_is_the_gradient_where_transverse", "documented (affine for linear logits)"),
        ("Assumption 5.13", "ω(τ): soft-to-hard transfer of ∇, ∇²", "`transfer_modulus`", "test_landscape.py::test_transfer_modulus_at_the_binary_saddle", transfer()),
        ("Assumption 5.14", "profiled second variation along (η, Dθ*η)", "`shape_hessian(profiled=True)`, `profiled_min_eigenvalue`", "test_shape.py::test_profiled_second_variation_and_the_binary_saddle", saddle()),
        ("(5.10)", "hard cells Ω_k(φ)", "`MoE.hard`, `exact_cell_moments`", "test_shape.py::test_exact_hard_risk_matches_monte_carlo", "computed"),
        ("(5.11), Lemma 5.16, (5.12)–(5.15)", "confidently misrouted set and its mass bound", "`misrouting_bound`", "test_teacher.py::test_misrouting_bound_lemma_5_16", mis()),
        ("Lemma 5.15", "Weyl's inequality", "none: the spectra are computed directly (`critical_points`)", "test_landscape.py::test_non_teacher_critical_points_are_strict_saddles_at_small_tau", "documented (used, not computed)"),
        ("Thm. 5.17", "recovery, misrouted mass, strict saddles", "`recovery`, `critical_points`, `minima_path`, `run_landscape`", "test_landscape.py::test_recovery_error_at_the_minimum_shrinks_with_tau", "see docs/landscape.md"),
        ("§6", None),
        ("teacher of §6", "two-expert Gaussian model", "`TwoExpertGaussian`", "test_symmetry.py::test_monte_carlo_matches_exact", "computed"),
        ("(6.1), (6.2)", "router gradient", "`TwoExpertGaussian.gradient`, `.exact`", "test_symmetry.py::test_exact_gradient_and_hessian_are_derivatives", "computed"),
        ("linearisation at θ = 0", "∇L(0), ∇²L(0)", "`closed.balance.drift_at_balance`, `hessian_at_balance`", "test_symmetry.py::test_linearisation_closed_form_matches_quadrature_and_risk_at_balance", "computed"),
        ("(6.3)–(6.6)", "reduced operator M", "`reduced_operator`, `reduced_operator_mc`", "test_symmetry.py::test_reduced_operator_matches_monte_carlo", sym()),
        ("(6.7)", "linearised step", "`linear_iteration`", "test_symmetry.py::test_alignment_rate_matches_the_simulated_iteration_when_non_leading_modes_are_equal", "computed"),
        ("(6.8)", "sign of M = sign of c_u", "`closed.balance.contrast_on_separator`", "test_symmetry.py::test_sign_of_the_reduced_operator_is_the_sign_of_the_contrast_on_the_separator",
         f"c = (1, 2), u = e₁: c_u = {g(contrast_on_separator(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 0.0])))}"),
        ("Lemmas 6.1, 6.2", "vᵀMv; sign-response moments", "`closed.balance.reduced_closed_form`, `sign_moments`", "test_symmetry.py::test_lemma_6_1_and_prop_6_3", "as (6.3)–(6.6)"),
        ("Prop. 6.3", "a growing eigenpair correlated with u", "`operator_spectrum`", "test_symmetry.py::test_prop_6_3_leading_eigenvector_may_be_orthogonal_to_u", "property-tested"),
        ("(6.9)–(6.12)", "alignment rate ρ", "`alignment_rate`, `alignment`, `alignment_ratio`", "test_symmetry.py::test_alignment_rate_bounds_and_asymptotics_in_general",
         f"λ = (2, 1), η = 0.1: ρ = {g(sh.alignment_rate(torch.diag(torch.tensor([2.0, 1.0], dtype=F)), 0.1))}"),
    ]


def table() -> str:
    lines = [HEADER]
    tests = {p.name: p.read_text() for p in (ROOT / "tests").glob("test_*.py")}
    for row in rows():
        if row[1] is None:
            lines.append(f"| **{row[0]}** | | | | |")
            continue
        obj, what, fn, check, value = row
        for ref in re.findall(r"(test_\w+\.py)::(test_\w+)", check):
            if ref[0] not in tests or f"def {ref[1]}(" not in tests[ref[0]]:
                raise SystemExit(f"paper_objects: no test {ref[0]}::{ref[1]}")
        cells = [str(c).replace("|", "\\|") for c in (obj, what, fn, check, value)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    torch.set_num_threads(1)
    sys.exit(update(DOC, BEGIN, END, f"{BEGIN}\n{table()}\n{END}", "--check" in sys.argv[1:], "the paper objects table"))


if __name__ == "__main__":
    main()
