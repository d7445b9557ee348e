"""Validation against sampling noise: how often the ExampleValidator stops a new span drawn from the
same distribution (a false stop), and how often it lets a changed one through (a missed shift),
against the rule it replaced (TFDV's distances alone, every finding stopping) on the same
statistics.

A span is what a scheduled run gets: N synthetic faces (pipeline.default_data, seeds apart from
the baseline's), validated against the built-in 4,000 faces as the previous run's train split:
  same      drawn as the baseline was
  classes   the Happy share 15 points above FER2013's in every split (other faces relabelled
            Happy at random)
  darker    every pixel 20 grey levels darker (clipped at 0)

It calls the components directly (ExampleGen, StatisticsGen, ExampleValidator, with the shipped
schema and policy), not pipeline.run: 90 spans through the front door would be 90 start-ups.

    python bench/validation.py                       # sizes 300, 600, 4000; 10 seeds each
    python bench/validation.py --sizes 300 --seeds 3
"""
import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from components import example_gen, example_validator, statistics_gen  # noqa: E402
from pipeline import default_data  # noqa: E402
from pipeline.config import IngestConfig, config_path, load_json, load_validation  # noqa: E402

HAPPY = 3
VARIANTS = ("same", "classes", "darker")


def write_span(path: Path, rows: int, seed: int, variant: str) -> Path:
    """The span's CSV; "classes": in each split, exactly as many other faces relabelled Happy as
    raise its share 15 points above FER2013's (the baseline's expected share)."""
    rng = np.random.default_rng(10_000 + seed)
    faces = list(default_data.generate(rows, seed))
    spec = load_json("default_data.json")
    target = spec["fer2013_train_class_counts"][HAPPY] / sum(
        spec["fer2013_train_class_counts"]) + 0.15
    if variant == "classes":
        for usage in {u for _, _, u in faces}:
            members = [i for i, (_, _, u) in enumerate(faces) if u == usage]
            others = [i for i in members if faces[i][0] != HAPPY]
            wanted = round(target * len(members)) - (len(members) - len(others))
            for i in rng.permutation(others)[:max(wanted, 0)]:
                faces[i] = (HAPPY, *faces[i][1:])
    with open(path, "w") as f:
        f.write("emotion,pixels,Usage\n")
        for label, image, usage in faces:
            if variant == "darker":
                image = np.clip(image.astype(int) - 20, 0, 255)
            f.write(f"{label},{' '.join(map(str, image.ravel().tolist()))},{usage}\n")
    return path


def statistics(csv: Path, out: Path, ingest, policy, schema) -> dict:
    example_gen.run(str(csv), str(out / "examples"), ingest, [])
    return statistics_gen.run(str(out / "examples"), str(out / "statistics"), ingest.splits,
                              policy["exposure"], schema)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[300, 600, 4000])
    parser.add_argument("--seeds", type=int, default=10)
    args = parser.parse_args()
    from components import schema_gen

    ingest, policy = IngestConfig.load(), load_validation(IngestConfig.load().splits)
    schema_file = str(config_path("schema.pbtxt"))
    schema = schema_gen.load_curated(schema_file)
    stops = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        baseline = statistics(default_data.write_csv(tmp / "baseline.csv", 4000, 0),
                              tmp / "baseline", ingest, policy, schema)["train"]
        for size in args.sizes:
            for variant in VARIANTS:
                for seed in range(1, args.seeds + 1):
                    case = tmp / f"{size}-{variant}-{seed}"
                    case.mkdir()
                    started = time.perf_counter()
                    stats = statistics(write_span(case / "span.csv", size, seed, variant), case,
                                       ingest, policy, schema)
                    try:
                        example_validator.run(stats, schema_file, str(case), policy, baseline)
                        stopped = False
                    except example_validator.DataValidationError:
                        stopped = True
                    findings = json.loads((case / "anomalies.json").read_text())["findings"]
                    before = bool(findings)  # every finding stopped, noise or not
                    why = sorted({f"{f['check']}:{f['feature']}" for f in findings
                                  if f["action"] == "stop"})
                    stops.setdefault((size, variant), []).append((stopped, before))
                    print(json.dumps({"size": size, "variant": variant, "seed": seed,
                                      "stopped": stopped, "stopped_before": before,
                                      "why": why,
                                      "seconds": round(time.perf_counter() - started, 1)}),
                          flush=True)
    print("\n| rows | span | stopped now | stopped by distances alone | wanted |")
    print("|---|---|---|---|---|")
    for (size, variant), outcomes in stops.items():
        now, before = sum(s for s, _ in outcomes), sum(b for _, b in outcomes)
        wanted = "never" if variant == "same" else "always"
        print(f"| {size:,} | {variant} | {now} of {len(outcomes)} | {before} of {len(outcomes)} "
              f"| {wanted} |")


if __name__ == "__main__":
    main()
