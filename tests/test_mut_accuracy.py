"""Kills mutants of harness/accuracy.py (issue 19): the tolerance per precision just inside
and just outside, the agreement rule's floor, and the timed-output verdict at 98 %."""
import numpy as np
import pytest

from harness.accuracy import Disagreement, agreeing, compare, judge, tolerance

# The documented tolerances (README "Accuracy"), written here rather than read from the module.
TOL = {"fp32": 1e-4, "fp16": 2e-2, "bf16": 6e-2, "q8_0": 6e-2, "q4_0": 2e-1, "int8": 6e-2}


@pytest.mark.parametrize("precision", sorted(TOL))
def test_tolerance_per_precision(precision):
    assert tolerance(precision) == TOL[precision]


def test_unknown_precision_gets_the_strictest_tolerance():
    assert tolerance("fp64") == 1e-4


@pytest.mark.parametrize("precision", sorted(TOL))
@pytest.mark.parametrize("factor,passed", [(0.99, True), (1.0, True), (1.01, False)])
def test_compare_at_the_tolerance(precision, factor, passed):
    ref = np.array([[[2.0, -4.0, 0.0]]])  # max |reference| = 4; x4 and /4 are exact
    out = ref.copy()
    out[0, 0, 2] += factor * TOL[precision] * 4.0
    r = compare(out, ref, precision)
    assert r["passed"] is passed and r["status"] == ("pass" if passed else "fail")
    assert r["rel_err"] == pytest.approx(factor * TOL[precision], rel=1e-9)
    assert r["tolerance"] == TOL[precision] and r["precision"] == precision


def test_compare_reports_errors_by_hand():
    ref = np.array([[1.0, 3.0], [-2.0, 0.5]])
    out = np.array([[1.5, 3.0], [-2.0, 0.25]], dtype=np.float32)
    r = compare(out, ref, "fp16")
    assert r["max_abs_err"] == pytest.approx(0.5)
    assert r["mean_abs_err"] == pytest.approx((0.5 + 0 + 0 + 0.25) / 4)
    assert r["rel_err"] == pytest.approx(0.5 / 3.0)
    assert r["top1_agree"] == 1.0
    swapped = np.array([[3.0, 1.0], [-2.0, 0.5]])
    assert compare(swapped, ref, "q4_0")["top1_agree"] == 0.5


def test_compare_zero_reference_uses_unit_scale():
    ref = np.zeros((1, 3))
    r = compare(np.full((1, 3), 5e-5), ref, "fp32")
    assert r["rel_err"] == pytest.approx(5e-5) and r["passed"] is True


def test_compare_shape_mismatch_and_non_finite_fail():
    r = compare(np.zeros((1, 2)), np.zeros((1, 3)), "fp32")
    assert r == {"status": "fail", "passed": False, "reason": "logits shape (1, 2) != reference (1, 3)"}
    bad = compare(np.array([[np.nan, 1.0]]), np.array([[0.0, 1.0]]), "q4_0")
    assert bad["passed"] is False and bad["status"] == "fail"


def test_agreeing_floor_is_tol_times_largest_abs_logit_per_position():
    ref = np.array([[10.0, 9.0, -20.0],    # max 10, max|.| 20, tol 0.05 -> floor 9.0
                    [1.0, 0.95, 0.0]])     # max 1, max|.| 1 -> floor 0.95
    tokens = np.array([1, 1])
    assert agreeing(ref, tokens, 0.05).tolist() == [True, True]
    assert agreeing(ref, tokens, 0.0499).tolist() == [False, False]
    assert agreeing(ref, np.array([0, 2]), 0.05).tolist() == [True, False]


def test_agreeing_rejects_out_of_vocab_and_non_finite():
    ref = np.array([[1.0, 2.0, 3.0], [1.0, np.nan, 3.0], [1.0, 2.0, 3.0]])
    assert agreeing(ref, np.array([3, 1, -1]), 1.0).tolist() == [False, False, False]
    # a reference row holding a NaN has no finite maximum: nothing agrees there
    assert agreeing(ref, np.array([2, 2, 2]), 0.1).tolist() == [True, False, True]
    assert agreeing(ref, np.array([0, 0, 1]), 0.1).tolist() == [False, False, False]
    # the last valid id is in the vocabulary
    assert agreeing(np.array([[0.0, 5.0]]), np.array([1]), 0.0).tolist() == [True]


def _flags(agree, total):
    return [np.array([True] * agree + [False] * (total - agree))]


@pytest.mark.parametrize("agree,passed", [(98, True), (97, False), (100, True)])
def test_judge_at_the_98_percent_threshold(agree, passed):
    first = Disagreement(sequence=1, position=7, token=42, reference_token=9)
    c = judge(_flags(agree, 100), first, sequences=4, outputs=2, repetitions=5, precision="q8_0", reference="r")
    assert c.passed is passed and c.status == ("pass" if passed else "fail")
    assert c.agreement == pytest.approx(agree / 100)
    assert (c.checked_tokens, c.sequences, c.outputs, c.repetitions) == (100, 4, 2, 5)
    assert c.tolerance == 6e-2 and c.reference == "r" and c.first_disagreement is first
    if not passed:
        assert c.reason == ("timed path: 97.0% of 100 tokens produced by the timed prefill/decode agree with "
                            "the reference's greedy choice (need 98% within tolerance 0.06); first at sequence 1, "
                            "produced token 7: 42, reference 9")
    else:
        assert c.reason is None


def test_judge_counts_over_all_flag_arrays_and_no_tokens_is_unchecked():
    c = judge([np.array([True, False]), np.array([True, True, True])], None, sequences=2, outputs=1,
              repetitions=1, precision="fp32", reference="r")
    assert c.checked_tokens == 5 and c.agreement == pytest.approx(0.8) and c.passed is False
    assert c.reason.endswith("tolerance 0.0001)")
    u = judge([np.array([], dtype=bool)], None, sequences=1, outputs=1, repetitions=1, precision="fp32",
              reference="r")
    assert u.status == "unchecked" and u.passed is None and u.reason == "the timed path produced no tokens"


def test_agreeing_token_zero_is_judged_by_its_own_logit():
    ref = np.array([[5.0, 0.0, 1.0]])
    assert agreeing(ref, np.array([0]), 0.1).tolist() == [True]
    assert agreeing(ref, np.array([1]), 0.1).tolist() == [False]


def test_agreeing_takes_float_token_ids_as_read_back_from_json():
    ref = np.array([[0.0, 1.0, 9.0]])
    assert agreeing(ref, np.array([2.0]), 0.01).tolist() == [True]
    assert agreeing(ref, [1.0], 0.01).tolist() == [False]


def test_compare_top1_per_position_of_a_batch_of_sequences():
    # [batch 1, 2 positions, vocab 3]: the greedy choice is judged per position (last axis)
    ref = np.array([[[0.0, 1.0, 2.0], [3.0, 1.0, 0.0]]])
    out = np.array([[[0.0, 2.5, 2.0], [3.0, 1.0, 0.0]]])  # position 0 now picks token 1
    assert compare(out, ref, "q4_0")["top1_agree"] == 0.5
    # per-sequence argmax over positions, or one over the flat array, would say otherwise
    same_flat = np.array([[[0.0, 1.0, 2.0], [3.0, 4.0, 0.0]]])
    assert compare(same_flat, ref, "q4_0")["top1_agree"] == 0.5
