"""One CSV row per (run, student): settings, data seed, vs teacher, families, seconds, last stage-3 val KL."""
import csv
import json
import sys
from pathlib import Path

rows = []
for d in sys.argv[2:]:
    d = Path(d)
    for name in ["linear", "hybrid_every4"]:
        f = d / name / "result.json"
        if not f.exists():
            continue
        r = json.loads(f.read_text())
        data = r["commands"][1].split("--data ")[1].split(" ")[0]
        tf = Path(data) / "teacher_eval.json"
        if not tf.exists():
            tf = Path(data).parent / "teacher_eval.json"
        t = json.loads(tf.read_text())["mean_accuracy"]
        suite = json.loads((Path(data) / "suite.json").read_text())
        log = [l.split(",") for l in (d / name / "run/log.csv").read_text().splitlines()[1:]]
        kl = [x for x in log if x[0] == "3" and x[4]]
        rows.append({"run": d.name, "student": name, "data_seed": suite.get("seed"),
                     "teacher": round(t, 4), "mean": round(r["mean_accuracy"], 4),
                     "vs_teacher": round(r["mean_accuracy"] / t, 4),
                     **{k: round(v, 2) for k, v in r["per_family"].items()},
                     "stage3_val_kl": float(kl[-1][4]) if kl else None,
                     "row_seconds": r["seconds"], "distill_seconds": r["command_seconds"][1],
                     "distill_command": r["commands"][1], "convert_command": r["commands"][0]})
with open(sys.argv[1], "w", newline="") as fh:
    w = csv.DictWriter(fh, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
for x in rows:
    print(x["run"], x["student"], x["data_seed"], x["vs_teacher"], x["position"], x["reverse"], x["row_seconds"])
