#!/usr/bin/env bash
# Every shipped pipeline timed on one GPU in one call (issue #67), for whenever a GPU is lent:
# ct-denoise and nodule-detection on 300 slices of 512 x 512, tumor-segmentation on one four-contrast
# brain study, the model zoo's lung_nodule_ct_detection bundle (random weights of its network) and an
# nnU-Net 3d_fullres folder (the tests' folder on their 3 x 4 x 2 mm grid: building the 1 mm one, planning
# and fitting on the CPU, took over 215 s of a lent H100's time), against nnUNetv2_predict on the same
# GPU, each warm (model loaded once) and the median of REPEAT runs (default 5), then one table
# (bench/gpu_table.py) of what OUT_DIR holds. The node end to end with the GPU worker
# (bench/time_to_result.py) runs when dcmtk's storescu and Orthanc are installed. Each step has its
# own time limit; on an H100 (2026-11-27) the four pipeline steps took 22, 64, 84 and 64 s with
# REPEAT=3 (most of it making the input series), which keeps the whole under 5 minutes.
#
#     bench/gpu_all.sh [OUT_DIR [STEP...]]   # OUT_DIR default gpu-timings; STEP: ct-denoise nodule-detection
#                                            # tumor-segmentation lung-bundle nnunet time-to-result (default all)
# Needs the shared data (RADNODE_DATA, default ../shared/data) and radnode's test extras (nnunetv2).
set -u
out=${1:-gpu-timings}
shift || true
steps=${*:-ct-denoise nodule-detection tumor-segmentation lung-bundle nnunet time-to-result}
mkdir -p "$out"
python=${PYTHON:-python3}
common=(--device cuda --repeat "${REPEAT:-5}" --threads "${THREADS:-$(nproc)}")

bench() {  # bench NAME SECONDS ARGS...: one timed command, its log (and JSON) in $out
    local name=$1 limit=$2 started=$SECONDS
    shift 2
    timeout "$limit" "$python" "$@" >"$out/$name.log" 2>&1
    echo "$name: exit $? after $((SECONDS - started)) s ($out/$name.log)"
}

"$python" -c 'import torch; assert torch.cuda.is_available(), "no CUDA device"; print(torch.cuda.get_device_name())' || exit 1
for step in $steps; do
    case $step in
        ct-denoise) bench "$step" 90 -m bench.denoise "${common[@]}" --json "$out/$step.json" ;;
        nodule-detection) bench "$step" 150 -m bench.nodule "${common[@]}" --json "$out/$step.json" ;;
        tumor-segmentation) bench "$step" 180 -m bench.tumor "${common[@]}" --json "$out/$step.json" ;;
        lung-bundle) bench "$step" 120 -m bench.bundles "${common[@]}" --json "$out/$step.json" ;;
        nnunet) bench "$step" 120 -m bench.nnunet --shrink 3,4,2 "${common[@]}" --json "$out/$step.json" ;;
        time-to-result)
            if [ -x /usr/bin/storescu ] && command -v Orthanc >/dev/null; then
                bench "$step" 120 -m bench.time_to_result --pipeline ct-denoise --repeat "${REPEAT:-5}"
            else
                echo "$step: not run (needs /usr/bin/storescu and Orthanc on this machine)"
            fi ;;
        *) echo "unknown step $step" >&2; exit 2 ;;
    esac
done
"$python" -m bench.gpu_table "$out" | tee "$out/table.md"
