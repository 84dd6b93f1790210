#!/usr/bin/env bash
# Add PruneScope to the desktop menu of the current user (freedesktop: GNOME, KDE, Xfce, ...).
#
#   install-desktop.sh              from a built bundle (this script is copied into dist/prunescope/)
#                                   or from the source tree (uses dist/prunescope or a pip-installed
#                                   `prunescope` command)
#   install-desktop.sh --uninstall  removes the menu entry, icons and command link again
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
data=${XDG_DATA_HOME:-$HOME/.local/share}
bin=$HOME/.local/bin

if [ -d "$here/_internal/resources" ]; then      # inside the bundle
    resources=$here/_internal/resources
    app=$here/prunescope
else                                              # packaging/ of the source tree
    resources=$here/../resources
    if [ -x "$here/../dist/prunescope/prunescope" ]; then
        app=$(cd "$here/../dist/prunescope" && pwd)/prunescope
    else
        app=$(command -v prunescope || true)
    fi
fi

refresh() {
    command -v update-desktop-database >/dev/null && update-desktop-database -q "$data/applications" || true
    command -v gtk-update-icon-cache >/dev/null && gtk-update-icon-cache -q -t "$data/icons/hicolor" || true
}

if [ "${1:-}" = "--uninstall" ]; then
    rm -f "$data/applications/prunescope.desktop" \
          "$data/icons/hicolor/256x256/apps/prunescope.png" \
          "$data/icons/hicolor/scalable/apps/prunescope.svg"
    [ -L "$bin/prunescope" ] && rm -f "$bin/prunescope"
    refresh
    echo "PruneScope removed from the desktop menu"
    exit 0
fi

if [ -z "$app" ]; then
    echo "install-desktop.sh: no prunescope executable: build the bundle (packaging/build.sh) or pip install ." >&2
    exit 1
fi
app=$(readlink -f "$app")  # never link ~/.local/bin/prunescope to itself

install -Dm644 "$resources/icons/prunescope.png" "$data/icons/hicolor/256x256/apps/prunescope.png"
if [ -f "$resources/icons/prunescope.svg" ]; then
    install -Dm644 "$resources/icons/prunescope.svg" "$data/icons/hicolor/scalable/apps/prunescope.svg"
fi
# The menu entry names the executable by absolute path: ~/.local/bin is often not on the session's PATH.
mkdir -p "$data/applications"
sed -e "s|^Exec=prunescope|Exec=\"$app\"|" -e "s|^TryExec=prunescope|TryExec=$app|" \
    "$resources/prunescope.desktop" > "$data/applications/prunescope.desktop"
# A command for the terminal too, unless one is already installed there (e.g. by pip).
if [ ! -e "$bin/prunescope" ] || [ -L "$bin/prunescope" ]; then
    mkdir -p "$bin"
    ln -sfn "$app" "$bin/prunescope"
fi
refresh
echo "PruneScope added to the desktop menu (runs $app)"
