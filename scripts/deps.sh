# scripts/deps.sh - sourced by the Quick-start commands: installs, on Debian
# or Ubuntu, whatever of the build and test tools is missing.  Usage:
#   . scripts/deps.sh; ensure_deps PACKAGE...   (command-less packages too)
ensure_deps() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
            || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "memalloc: installing ${missing[*]}" >&2
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null; then sudo="sudo"; else
            echo "memalloc: please install: ${missing[*]} (apt-get install ${missing[*]})" >&2
            return 1
        fi
    fi
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 &&
        $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            "${missing[@]}" >&2
}
