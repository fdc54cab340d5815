"""The bundled reference simulation: a small, honest FUSION stand-in (standard library only).

A discrete-event simulation of dynamic connection requests in an elastic optical
network, configured by FUSION's own INI keys (`settings`), on NSFNet or a single link
(`topology`), k shortest paths by length and first-fit contiguous spectrum with guard
slots (`engine`). Erlang points run in forked worker processes (`sweep`), and one that
dies ends the run at once; the parent writes SPEC §5 progress events (`events`) and
`{output_dir}/{erlang!r}_erlang.json` per point, e.g. `300.0_erlang.json` as FUSION
names them, with FUSION's own keys (`blocking_mean`, `ci_percent_block`, `iter_stats`,
...) besides its own, so `fusion_runner.results` reads both alike. Mean blocking, a
95 % Student-t interval and FUSION's interval over iterations come from `stats`.
Entry point and exit statuses: `cli`.
"""
