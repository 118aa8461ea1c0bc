#!/usr/bin/env bash
# Run every benchmark, one after another; each writes its JSON into $RESULTS_DIR.
#
#   bash benchmarks/run_all.sh          # this machine's CPU (1 thread), into benchmarks/results
#   bash benchmarks/run_all.sh gpu      # CUDA: results named *_gpu.json
#
# Environment: PYTHON (default python), RESULTS_DIR (default benchmarks/results), THREADS
# (CPU threads, default 1 on cpu and 8 on gpu), STEP_TIMEOUT (seconds per benchmark, default
# 3600), RECIPE_TIMEOUT (for bench_recipe_choices, default STEP_TIMEOUT), RECIPE_ARGS (extra
# options of bench_recipe_choices). bench_recipe_choices, bench_fine_tuning,
# bench_multilabel_options and bench_unseen_objects need the evaluation sets:
#   python classification/tools/make_eval_sets.py
set -u
profile=${1:-cpu}
py=${PYTHON:-python}
out=${RESULTS_DIR:-benchmarks/results}
cd "$(dirname "$0")/.."
mkdir -p "$out"

if [ "$profile" = gpu ]; then
    device=cuda suffix=_gpu threads=${THREADS:-8}
    archs="efficientnet_lite0 efficientnet_lite2"
    throughput_extra="--batches 20"
    ceiling_extra="--n 8192"
    workers="0 8"
else
    device=cpu suffix="" threads=${THREADS:-1}
    archs="efficientnet_lite0 efficientnet_lite1 efficientnet_lite2 resnet18 resnet50"
    throughput_extra="" ceiling_extra="" workers="0"
fi

run() {
    local name=$1 limit=${STEP_TIMEOUT:-3600}
    shift
    [ "$name" = bench_recipe_choices ] && limit=${RECIPE_TIMEOUT:-$limit}
    echo "== $name $* ($(date -u +%H:%M:%S))"
    timeout "$limit" "$py" "benchmarks/$name.py" --device "$device" --threads "$threads" \
        --json "$out/$name$suffix.json" "$@"
    local rc=$?
    [ $rc -eq 0 ] || echo "!! $name stopped with exit status $rc"
}

# shellcheck disable=SC2086  # word splitting of the option lists is intended
{
    run bench_time_to_accuracy
    run bench_inference --archs $archs
    run bench_training_throughput --archs $archs $throughput_extra
    run bench_dataloading --workers $workers
    run bench_compute_ceiling --archs $archs $ceiling_extra
    run bench_recipe_choices ${RECIPE_ARGS:-}
    run bench_fine_tuning
    run bench_multilabel_options
    run bench_imbalance
    run bench_large_photos
    run bench_small_images
    run bench_unseen_objects
}
