#!/usr/bin/env bash
# Every GPU figure in one call: the GPU tests, training throughput and caption latency against the Hugging Face
# peer, about three minutes of configs/vit_b16.yaml on the built-in set and the pointing game on that model. Each
# stage runs in its own time box, so a failed or slow one does not lose the others; one table against the targets
# comes last. Run it from the repository root:
#
#   benchmarks/gpu_suite.sh                        # a bare GPU machine, with the wheels of `make gpu-wheels` in .whl/
#   benchmarks/gpu_suite.sh --device cpu --quick   # the same stages on the CPU at tiny sizes, seconds each
#
# Options: --device cuda|cpu (default cuda); --quick (tiny sizes); --results DIR (default benchmarks/results, with
# --quick a new temporary folder); --deadline SECONDS, the whole suite (default 540); --stages a,b,... to run only
# those, and wheels and summary (each run starts from an empty work folder: `data` feeds trainer, fit and pointing,
# `fit` feeds export, `export` pointing). The results are DIR/<name>_<tag>.json, tag gpu (cuda) or cpu; when $OUT is
# set they are copied there after every stage, with the whole log (gpu_suite.log). The exit code is the number of
# stages that failed or ran out of time.
#
# Stage budgets on an H100/H200. The box is the stage's `timeout`; "expected" is an estimate from the benchmarks'
# run times on CPU and what compiling costs (nothing here has run on a GPU yet: replace it with what the log says).
#   stage      box s  expected s  what                                                                  writes
#   wheels        20        3     pip install .whl/*.whl --target WORK/site (skipped without .whl/)
#   preflight     20       10     import every module the stages run; versions, the GPU                 suite
#   data          30        8     make-synthetic: 20,000 + 1,000 images of 128 px, one process a core
#   tests         75       45     pytest -m gpu: tests/test_gpu.py (3 small CUDA-graph compiles)        suite
#   train         90       75     train_throughput: peer, ours_eager, ours (ViT-B/16 + 12x768, 128)      train
#   trainer       75       55     train_throughput: trainer (Lightning + JPEGs, compiled)               train_trainer
#   generate      45       25     generate_latency: peer, ours; batch 1 and 64, greedy and beam 3       generate
#   compiled      70       55     generate_latency: ours, ours_compiled (4 CUDA-graph compiles)         generate_compiled
#   fit       60-220      190     train.py fit --config configs/vit_b16.yaml: what the deadline leaves   suite
#                                 after 80 s for the last three stages; training stops 40 s before its box
#                                 ends, after at most 3 minutes (start-up, tokenizer and saving take the 40 s)
#   export        30       10     vision-attn export of its last.ckpt
#   pointing      35       20     benchmarks/pointing_game.py on 300 validation images                  pointing_game
#   summary       15        5     the tables that end the output                                        suite
# Expected in all: about 8.5 minutes, the fit taking up the slack of the 9-minute deadline. Should every other stage
# run out its box, the fit still gets its 60 s and the suite ends after about 9.5 minutes, inside the 10 minutes
# one call of the GPU machine may take.
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEVICE=cuda QUICK=0 RESULTS="" DEADLINE=540 ONLY=""
while [ $# -gt 0 ]; do
  case $1 in
    --device) DEVICE=${2:?--device needs cuda or cpu}; shift 2 ;;
    --quick) QUICK=1; shift ;;
    --results) RESULTS=${2:?--results needs a folder}; shift 2 ;;
    --deadline) DEADLINE=${2:?--deadline needs seconds}; shift 2 ;;
    --stages) ONLY=${2:?--stages needs a comma-separated list}; shift 2 ;;
    -h | --help) sed -n '2,/^set /p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_suite.sh: unknown option $1 (--help lists them)" >&2; exit 2 ;;
  esac
done
case $DEVICE in
  cuda) TAG=gpu ACCEL=(--trainer.accelerator gpu --trainer.precision bf16-mixed) ;;
  # one torch thread: on a small CPU shared with other work, OpenMP threads that wait for each other cost seconds
  cpu) TAG=cpu ACCEL=(--trainer.accelerator cpu --trainer.devices 1 --trainer.precision 32-true)
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} ;;
  *) echo "gpu_suite.sh: --device is cuda or cpu, not $DEVICE" >&2; exit 2 ;;
esac

PY=${PYTHON:-python3}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_suite.XXXXXX")  # data, the training run, the model: gone at the end
trap 'rm -rf "$WORK"' EXIT
if [ -z "$RESULTS" ]; then
  RESULTS=$REPO/benchmarks/results
  if [ $QUICK = 1 ]; then RESULTS=$(mktemp -d "${TMPDIR:-/tmp}/gpu_suite_results.XXXXXX"); fi
fi
mkdir -p "$RESULTS" && RESULTS=$(cd "$RESULTS" && pwd)
DATA=$WORK/data STATUS=$WORK/stages.tsv LOG=$WORK/gpu_suite.log
selected() { [ -z "$ONLY" ] || [[ ",wheels,summary,$ONLY," == *",$1,"* ]]; }  # wheels, summary: always
PRODUCTS=()
for pair in train:train trainer:train_trainer generate:generate compiled:generate_compiled pointing:pointing_game \
  summary:suite; do
  PRODUCTS+=("$RESULTS/${pair#*:}_$TAG.json")
  # a stage that fails must not leave an earlier run's file to be read as its own
  if selected "${pair%%:*}"; then rm -f "$RESULTS/${pair#*:}_$TAG.json"; fi
done
cd "$REPO" || exit 2
export PYTHONPATH="$REPO:$WORK/site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec > >(tee "$LOG") 2>&1
TEE_PID=$!

if [ $QUICK = 1 ]; then  # seconds a stage, on any machine
  DATA_ARGS=(--train 64 --val 16 --image-size 64 --workers 1)
  TRAIN_ARGS=(--size demo --batch 2 --steps 2 --warmup 1)
  TRAINER_ARGS=(--size demo --batch 2 --trainer-steps 2 --warmup 1 --workers 0)
  GEN_ARGS=(--size demo --new-tokens 4 --reps 1 --warmup 0 --batch-sizes 1,2)
  COMPILED_ARGS=(--size demo --new-tokens 4 --reps 1 --warmup 0 --batch-sizes 1 --beams 1)  # one compile
  FIT_ARGS=(--trainer.max_epochs 1 --model.warmup_steps 2 --model.val_caption_tokens 8 --model.val_answer_tokens 4
    --model.encoder.name null --model.encoder.image_size 32 --model.encoder.patch_size 8 --model.encoder.dim 32 --model.encoder.depth 1
    --model.encoder.num_heads 2 --model.decoder.dim 32 --model.decoder.depth 1 --model.decoder.num_heads 2
    --data.batch_size 16 --data.num_workers 0 --data.val_max_images 8 --data.vocab_size 300
    --trainer.log_every_n_steps 1)
  FIT_BATCH=16
  POINT_ARGS=(--max-images 8 --batch-size 8)
else  # the benchmarks' GPU defaults: ViT-B/16 + 12x768 decoder, batch 128 (training), 1 and 64 (captions)
  DATA_ARGS=(--train 20000 --val 1000 --image-size 128 --workers "$(nproc)")
  TRAIN_ARGS=() TRAINER_ARGS=() GEN_ARGS=() COMPILED_ARGS=()
  # The config's 2,000 warm-up steps are 13 epochs of the built-in set: 300 here. Validation (250 images) and its
  # checkpoints (1.7 GB each with AdamW's state) come once a minute, not after each 10-second epoch, and once more
  # when max_time stops the run (40 epochs would take some 6 minutes at 2,000 images/s, so the time stops it).
  # last.ckpt, which export reads, holds the final step (LastCheckpoint writes it when training stops; the summary
  # records its step).
  FIT_ARGS=(--trainer.max_epochs 40 --trainer.val_check_interval 00:00:01:00 --model.warmup_steps 300
    --data.val_max_images 250 --trainer.log_every_n_steps 10)
  FIT_BATCH=128
  POINT_ARGS=(--max-images 300 --batch-size 64)
fi

START=$SECONDS
deliver() {  # copy this run's results and log into $OUT: what is there comes back even if the call is cut short
  [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ] || return 0
  for f in "${PRODUCTS[@]}" "$LOG"; do
    if [ -f "$f" ]; then cp "$f" "$OUT/"; fi
  done
}
stage() {  # stage NAME BOX COMMAND...: run COMMAND in a time box of BOX seconds (unless --stages leaves it out)
  local name=$1 box=$2 t0=$SECONDS rc=0
  shift 2
  selected "$name" || return 0
  echo
  echo "=== $name: up to ${box} s, from $((SECONDS - START)) s into the suite: $*"
  timeout --kill-after=10 "$box" "$@" </dev/null || rc=$?
  local took=$((SECONDS - t0))
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$took" "$box" >>"$STATUS"
  case $rc in
    0) echo "=== $name: done in ${took} s" ;;
    124 | 137) echo "=== $name: OUT OF TIME after ${took} s" ;;
    *) echo "=== $name: FAILED (exit code $rc) after ${took} s" ;;
  esac
  deliver
}

echo "gpu_suite.sh --device $DEVICE$([ $QUICK = 1 ] && echo ' --quick'): work folder $WORK, results $RESULTS"
if compgen -G "$REPO/.whl/*.whl" >/dev/null; then
  stage wheels 20 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --disable-pip-version-check \
    --upgrade --target "$WORK/site" "$REPO"/.whl/*.whl
else
  echo "=== wheels: none in .whl/ (make gpu-wheels makes them): using the packages installed here"
  printf 'wheels\tskipped\t0\t20\n' >>"$STATUS"
fi
stage preflight 20 "$PY" -m benchmarks.gpu_report preflight --device "$DEVICE" --out "$WORK/preflight.json"
stage data 30 "$PY" -m vision_attn.cli make-synthetic --out "$DATA" --seed 0 "${DATA_ARGS[@]}"
stage tests 75 "$PY" -m pytest -m gpu -v -rfEs -p no:cacheprovider tests/test_gpu.py --junitxml "$WORK/pytest.xml"
stage train 90 "$PY" -m benchmarks.train_throughput --device "$DEVICE" --variants peer,ours_eager,ours \
  "${TRAIN_ARGS[@]}" --out "$RESULTS/train_$TAG.json"
stage trainer 75 "$PY" -m benchmarks.train_throughput --device "$DEVICE" --variants trainer --data-root "$DATA" \
  "${TRAINER_ARGS[@]}" --out "$RESULTS/train_trainer_$TAG.json"
stage generate 45 "$PY" -m benchmarks.generate_latency --device "$DEVICE" --variants peer,ours "${GEN_ARGS[@]}" \
  --out "$RESULTS/generate_$TAG.json"
stage compiled 70 "$PY" -m benchmarks.generate_latency --device "$DEVICE" --variants ours,ours_compiled \
  "${COMPILED_ARGS[@]}" --out "$RESULTS/generate_compiled_$TAG.json"

# The fit takes what the deadline leaves after the last three stages' boxes (80 s), within 60..220 s; training
# stops 40 s before the box ends (Lightning's max_time) and after at most 3 minutes.
FIT_BOX=$((DEADLINE - (SECONDS - START) - 80))
FIT_BOX=$((FIT_BOX < 60 ? 60 : FIT_BOX > 220 ? 220 : FIT_BOX))
FIT_TRAIN=$((FIT_BOX - 40))
# The config's paths (runs/vit_b16/...) are relative: the run writes under the work folder. The device machine has
# no downloaded weights: the encoder (timm's ViT-B/16 architecture) starts from random ones.
IN_WORK=(bash -c 'cd "$0" && exec "$@"' "$WORK")
stage fit "$FIT_BOX" "${IN_WORK[@]}" "$PY" "$REPO/train.py" fit --config "$REPO/configs/vit_b16.yaml" \
  --data.root "$DATA" "${ACCEL[@]}" --trainer.num_sanity_val_steps 0 --trainer.enable_progress_bar false \
  --model.encoder.pretrained null \
  "${FIT_ARGS[@]}" \
  --trainer.max_time "$(printf '00:00:%02d:%02d' $((FIT_TRAIN / 60)) $((FIT_TRAIN % 60)))"
stage export 30 "$PY" -m vision_attn.cli export "$WORK/runs/vit_b16/checkpoints/last.ckpt" "$WORK/model"
stage pointing 35 "$PY" benchmarks/pointing_game.py --model "$WORK/model" --data-root "$DATA" --split val \
  --device "$DEVICE" "${POINT_ARGS[@]}" --out "$RESULTS/pointing_game_$TAG.json"
SETTINGS=$(printf '{"device": "%s", "quick": %s, "deadline_s": %s, "fit_train_s": %s}' \
  "$DEVICE" "$([ $QUICK = 1 ] && echo true || echo false)" "$DEADLINE" "$FIT_TRAIN")
stage summary 15 "$PY" -m benchmarks.gpu_report summary --tag "$TAG" --results "$RESULTS" --work "$WORK" \
  --fit-batch "$FIT_BATCH" --settings "$SETTINGS"

FAILED=$(awk -F'\t' '$2 != "0" && $2 != "skipped"' "$STATUS" | wc -l)
echo
echo "gpu_suite.sh: $FAILED stage(s) failed or ran out of time; $((SECONDS - START)) s in all; results in $RESULTS"
exec >&- 2>&-
wait "$TEE_PID" 2>/dev/null
deliver
exit "$((FAILED > 100 ? 100 : FAILED))"
