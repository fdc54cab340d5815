from fusion_runner.cli.main import main

raise SystemExit(main())
