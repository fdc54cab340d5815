from fusion_runner.refsim import cli

raise SystemExit(cli.main())
