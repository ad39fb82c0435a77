# Shared by scripts/test and scripts/demo: make .venv with espfleet installed.
# Sourced, not run. Installs Debian packages with apt-get when they are missing
# (CI runs as root on a fresh machine with only the package registries reachable).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

need_apt=()
for tool in "$@"; do
  command -v "$tool" >/dev/null 2>&1 || need_apt+=("$tool")
done
if [ "${#need_apt[@]}" -gt 0 ]; then
  if [ "$(id -u)" = "0" ]; then
    echo "==> apt-get install ${need_apt[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq "${need_apt[@]}" >&2
  else
    echo "warning: missing ${need_apt[*]} and not root: install them with apt-get" >&2
  fi
fi

PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv" >&2
  "$PY" -m venv .venv
fi
# Reinstall only when the dependency list changed since the last install (an install
# with the dev extras also serves scripts/demo, which needs none).
stamp=.venv/.espfleet-installed
hash="$(sha256sum pyproject.toml | cut -d' ' -f1)"
want="$hash-${ESPFLEET_EXTRAS:-}"
have="$(cat "$stamp" 2>/dev/null || true)"
if [ "$have" != "$want" ] && { [ -n "${ESPFLEET_EXTRAS:-}" ] || [ "${have%%-*}" != "$hash" ]; }; then
  echo "==> pip install -e .${ESPFLEET_EXTRAS:+[$ESPFLEET_EXTRAS]}" >&2
  .venv/bin/python -m pip install -q --upgrade pip >&2
  .venv/bin/python -m pip install -q -e ".${ESPFLEET_EXTRAS:+[$ESPFLEET_EXTRAS]}"  >&2
  echo "$want" > "$stamp"
fi
export PATH="$ROOT/.venv/bin:$PATH"
