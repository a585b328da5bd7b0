# Sourced by the scripts that run on a lent GPU (gpu_session.sh, gpu_batch_cli.sh), from the
# repository root, with PY and ROOT set.

# What the call carried: .whl (the packages the device image lacks, installed into /tmp/site
# with WHEELS=1, the default) and .carry/neu-det.tar.gz (NEU-DET, unpacked into $1; without it,
# ../shared/datasets/neu-det, as on a CPU). Exports NEU, PYTHONPATH where wheels were installed,
# and PYTHONUNBUFFERED, so that logs come back as they are written.
# Stops at once, saying what to carry, when the packages are not there (require_neu: the data):
# a call that forgot its carry would otherwise start runs that fail in their first second, and
# spend the loan waiting on them.
prepare_device() {
    if [[ ${WHEELS:-1} == 1 ]] && compgen -G ".whl/*.whl" >/dev/null; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/site .whl/*.whl || return 1
        export PYTHONPATH=/tmp/site
    fi
    if ! "$PY" -c "import sqlalchemy, ultralytics, pydantic_settings" 2>/dev/null; then
        echo "the product's packages are missing: carry .whl with the call (bench/README.md)" >&2
        return 1
    fi
    NEU=${NEU:-$ROOT/../shared/datasets/neu-det}
    if [[ -f .carry/neu-det.tar.gz ]]; then
        mkdir -p "$1" && tar -xzf .carry/neu-det.tar.gz -C "$1" || return 1
        NEU=$1/neu-det
    fi
    export NEU PYTHONUNBUFFERED=1
}

require_neu() {  # for the steps that train or evaluate on NEU-DET (DeepPCB's calls carry none)
    [[ -d $NEU ]] && return 0
    echo "no NEU-DET at $NEU: carry .carry/neu-det.tar.gz with the call (bench/README.md)" >&2
    return 1
}
