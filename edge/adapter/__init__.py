"""PLC adapters: subscribers that speak the line's protocol (Modbus TCP) and fail safe on lost heartbeats."""
