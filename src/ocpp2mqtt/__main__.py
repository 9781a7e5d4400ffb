from ocpp2mqtt.cli import main

raise SystemExit(main())
