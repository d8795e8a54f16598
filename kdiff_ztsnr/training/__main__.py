from .command import train_main

raise SystemExit(train_main())
