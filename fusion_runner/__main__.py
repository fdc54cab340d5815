from fusion_runner import cli

raise SystemExit(cli.main())
