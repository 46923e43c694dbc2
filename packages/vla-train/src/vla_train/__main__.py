from vla_train.cli import main

raise SystemExit(main())
