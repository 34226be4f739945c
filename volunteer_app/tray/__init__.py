"""The desktop tray app around the worker core (`commonweights-app`, `commonweights volunteer app`).

Modules, by role (the Qt-free ones first; importing this package loads none of them):

- `controller`: idle polling, the compute policy, steering the training child, the app's state.
- `child`: the training child process and the app's handle on it; `ipc`: their typed messages.
- `stats`: the numbers and series behind the statistics window.
- `app`: the Qt application wiring; `tray`, `window` (no-tray fallback), `settings_dialog`,
  `stats_window` and `charts`, `notifications`, `icons`, `single_instance`.
- `main`: the command line entry point; `xsession`: Xvfb and a tray for tests and benchmarks.
"""
