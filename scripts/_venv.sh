# Shared by scripts/quickstart and scripts/test: create the virtual environment and install subcoder
# into it. pip's chatter goes to a log file; on failure its tail is shown.
setup_venv() {  # usage: setup_venv VENV EXTRA   (EXTRA: "" or "[test]")
    local venv=$1 extra=$2 log="$1/setup.log"
    [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
    echo "setting up $venv (pip's log: $log)" >&2
    if ! {
        "$venv/bin/pip" install --upgrade pip &&
        # torch first, pinned: this machine's disk holds its CPU wheel; an open range makes pip fetch a multi-GB CUDA build
        "$venv/bin/pip" install torch==2.13.0 &&
        "$venv/bin/pip" install -e ".$extra"
    } >"$log" 2>&1; then
        tail -n 20 "$log" >&2
        echo "setup failed; the whole log is in $log" >&2
        return 1
    fi
}
