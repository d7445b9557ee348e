"""Paired comparisons of two models on the same examples, shared by the gates that compare a
candidate with a reference (the Evaluator against the serving model, the Exporter's
parity gate against the SavedModel): a difference decides only when it is larger than allowed
and its interval excludes 0, so a face or two of a small class cannot decide."""
import math


def paired_change(row) -> tuple[float, float]:
    """(candidate minus reference accuracy, its standard error) from paired counts [both right,
    only the candidate, only the reference, neither]: the observed difference, and the standard
    error of the Wald interval with Agresti and Min's 0.5 added to each cell (Statistics in
    Medicine, 2005), which stays honest when the two models disagree on few examples."""
    n = float(sum(row))
    change = (row[1] - row[2]) / n if n else 0.0
    both, only_new, only_old, neither = (float(v) + 0.5 for v in row)
    m = both + only_new + only_old + neither
    variance = ((only_new + only_old) - (only_new - only_old) ** 2 / m) / (m * m)
    return float(change), math.sqrt(max(variance, 0.0))


def paired_counts(candidate_right, reference_right) -> list[int]:
    """[both right, only the candidate, only the reference, neither] of two boolean arrays."""
    return [int((candidate_right & reference_right).sum()),
            int((candidate_right & ~reference_right).sum()),
            int((~candidate_right & reference_right).sum()),
            int((~candidate_right & ~reference_right).sum())]
