# Sourced by the entry scripts: re-runs the calling script as root (namespaces,
# TAP devices and raw sockets need it), keeping PATH so cargo is still found.
if [ "$(id -u)" -ne 0 ]; then
  exec sudo -E env "PATH=$PATH" "$0" "$@"
fi
