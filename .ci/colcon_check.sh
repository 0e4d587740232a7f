#!/usr/bin/env bash
# The repository as a ROS 2 package, checked with Debian's colcon and ament linters (Debian ships
# no rclpy, so nothing here runs a node):
#   1. installs the Debian packages when they are missing (as root, with apt-get);
#   2. `colcon build`s the ament_python package in a temporary folder (the source tree stays clean)
#      and checks the install: ament index marker, package.xml, every launch file and config under
#      share/dream_policy, the node scripts in lib/dream_policy, ament_index_python finds the package;
#   3. ament_xmllint on package.xml (against Debian's local copy of the format 3 schema), ament_flake8
#      and ament_pep257 on launch/ and ros_nodes/ (ament's configuration with the project's line
#      length, 110 as in ruff.toml, and docstring style). Findings in launch/, ros_nodes/ and
#      package.xml fail the check.
# Usage: bash .ci/colcon_check.sh   (from anywhere; ~5 s with the packages installed, ~35 s without)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PKG=dream_policy
LINE_LENGTH=110
# The project's docstring style, on top of ament's convention: the summary starts on the first line
# (D213 off; ament already leaves D212 off), summaries may be descriptive ("The ...", D401) and
# capitalised acronyms start them ("CALVIN's", D403).
PEP257_IGNORE=(D213 D401 D403)
# Debian bookworm names (there is no python3-colcon-common-extensions): `colcon` is the command,
# colcon-ros pulls colcon-core, the setup.py and recursive-crawl extensions and catkin_pkg.
DEB_PACKAGES=(
    colcon python3-colcon-core python3-colcon-ros python3-ament-index
    python3-ament-flake8 python3-ament-pep257 python3-ament-xmllint
)
START=$SECONDS

step() { printf '\n== %s (%ds)\n' "$*" "$((SECONDS - START))"; }
fail() { printf 'colcon_check: FAILED: %s\n' "$*" >&2; exit 1; }

# ---- 1. Debian packages ---------------------------------------------------------------------------
step "Debian packages"
missing=()
for pkg in "${DEB_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    if [[ "$(id -u)" != 0 ]] || ! command -v apt-get >/dev/null; then
        fail "missing ${missing[*]} and cannot install them (needs root and apt-get)"
    fi
    echo "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# ---- 2. colcon build ------------------------------------------------------------------------------
# The system Python builds (what colcon and ROS use), never the project's virtualenv; colcon's
# ament_python build runs `setup.py ... install --single-version-externally-managed`, which installs
# no dependencies, and nothing may reach an index (torch and the rest come from requirements.txt).
unset PYTHONPATH VIRTUAL_ENV PYTHONHOME
export PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
export PIP_NO_INDEX=1
export PYTHONDONTWRITEBYTECODE=1
WORK="$(mktemp -d -t colcon_check.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT

step "colcon build (in $WORK)"
before=()
for dir in build install log; do [[ -e "$REPO/$dir" ]] && before+=("$dir"); done
(
    cd "$WORK"
    colcon --log-base "$WORK/log" build --base-paths "$REPO" \
        --build-base "$WORK/build" --install-base "$WORK/install"
) > "$WORK/colcon.out" 2>&1 || {
    cat "$WORK/colcon.out" "$WORK"/log/latest_build/"$PKG"/stdout_stderr.log 2>/dev/null
    fail "colcon build"
}
grep -E "^(Finished|Summary)" "$WORK/colcon.out" || true
# The build must leave the source tree as it was (build/ and the egg-info go to the build base).
for dir in build install log; do
    [[ -e "$REPO/$dir" && ! " ${before[*]} " =~ " $dir " ]] && fail "colcon build created $REPO/$dir"
done

step "installed files"
PREFIX="$WORK/install/$PKG"
expected=(
    "share/ament_index/resource_index/packages/$PKG"
    "share/$PKG/package.xml"
)
while IFS= read -r file; do expected+=("share/$PKG/$file"); done < <(
    cd "$REPO" && find launch -name '*.py' -type f && find configs -name '*.yaml' -type f)
for node in sim_node policy_node; do expected+=("lib/$PKG/$node"); done
problems=()
for file in "${expected[@]}"; do [[ -f "$PREFIX/$file" ]] || problems+=("missing $file"); done
entry_points="$(cat "$PREFIX"/lib/python3*/site-packages/"$PKG"-*.egg-info/entry_points.txt 2>/dev/null || true)"
for node in sim_node policy_node; do
    script="$PREFIX/lib/$PKG/$node"
    if [[ -f "$script" && ! -x "$script" ]]; then problems+=("lib/$PKG/$node is not executable"); fi
    if ! grep -qx "$node = ros_nodes.$node:main" <<<"$entry_points"; then
        problems+=("no console script $node = ros_nodes.$node:main in the installed entry_points.txt")
    fi
done
for module in ros_nodes/sim_node.py ros_nodes/policy_node.py dream_policy/cli.py; do
    compgen -G "$PREFIX/lib/python3*/site-packages/$module" >/dev/null || problems+=("missing site-packages/$module")
done
((${#problems[@]} == 0)) || { printf '  %s\n' "${problems[@]}"; fail "install tree"; }
echo "ok: ${#expected[@]} files under install/$PKG, node scripts executable"
# What `ros2 launch dream_policy ...` and FindPackageShare resolve, with the install sourced.
share="$(AMENT_PREFIX_PATH="$PREFIX" python3 -c \
    "from ament_index_python.packages import get_package_share_directory as d; print(d('$PKG'))")"
[[ "$share" == "$PREFIX/share/$PKG" ]] || fail "ament_index_python resolves $PKG to '$share'"
echo "ok: ament_index_python finds share/$PKG"

# ---- 3. ament linters -----------------------------------------------------------------------------
cd "$REPO"
status=0
step "ament_xmllint package.xml"
ament_xmllint package.xml || { echo "ament_xmllint: findings in package.xml"; status=1; }

lint() {  # lint <paths...>
    step "ament_flake8 $*"
    ament_flake8 --linelength "$LINE_LENGTH" "$@" || status=1
    step "ament_pep257 $*"
    ament_pep257 --add-ignore "${PEP257_IGNORE[@]}" -- "$@" || status=1
}
lint launch
lint ros_nodes

step "done"
((status == 0)) || fail "linter findings in launch/, ros_nodes/ or package.xml"
echo "colcon_check: ok"
