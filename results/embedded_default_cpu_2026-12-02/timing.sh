#!/usr/bin/env bash
# interleaved 1/5-scale timing of the old and the new main-job distillation (linear student), core 1, 1 thread
set -euo pipefail
cd "$(dirname "$0")/../.."; . .venv/bin/activate; export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
T=runs/tune/timing; mkdir -p $T
[ -d $T/stu_old ] || taskset -c 1 mmmamba convert --teacher models/tiny-teacher --out $T/stu_old >/dev/null
[ -d $T/stu_new ] || taskset -c 1 mmmamba convert --teacher models/tiny-teacher --out $T/stu_new --conv-kernel 4 >/dev/null
for round in 1 2 3; do
  for which in old new; do
    rm -rf $T/r
    if [ $which = old ]; then
      a=(--data runs/tune/suite_s1 --student $T/stu_old --steps-per-stage 30,30,60 --batch-size 16)
    else
      a=(--data runs/tune/suite_s1___family_train_position_2000___family_train_reverse_1500_ --student $T/stu_new --steps-per-stage 50,100,250 --batch-size 8 --pack)
    fi
    s=$(date +%s.%N)
    taskset -c 1 mmmamba distill --teacher models/tiny-teacher --out $T/r --lr-scale 10 --eval-every 1000 --device cpu "${a[@]}" >/dev/null 2>&1
    e=$(date +%s.%N)
    echo "round $round $which $(python3 -c "print(round($e-$s,1))") s  load $(cut -d' ' -f1 /proc/loadavg)" | tee -a $T/times.txt
  done
done
