from .cli import train_main

raise SystemExit(train_main())
