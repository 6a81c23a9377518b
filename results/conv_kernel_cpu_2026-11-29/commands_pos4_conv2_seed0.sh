set -e
# from the repository root, with the package installed
O=OUT/conv2_pos4
mkdir -p $O
for k in 2; do
  [ -f $O/k$k/student/config.json ] || mmmamba convert --teacher models/tiny-teacher --keep-attention none --init mimic --conv-kernel $k --out $O/k$k/student > /dev/null 2>&1
  mmmamba distill --teacher models/tiny-teacher --student $O/k$k/student --data SUITE_POS4 --out $O/k$k/run --stages 1,2,3 --steps-per-stage 300,300,600 --batch-size 16 --lr-scale 10.0 --eval-every 400 > $O/k$k.log 2>&1
  mmmamba eval --model $O/k$k/run/after_stage3 --data SUITE_POS4 --split test --json $O/k$k/eval.json --answers $O/k$k/answers.jsonl > $O/k$k.eval.txt 2>&1
  echo "k$k done $(date +%T)"
done
