from mmdistill.cli import main

raise SystemExit(main())
