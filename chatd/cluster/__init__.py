"""Cluster mode: several chatd nodes over one PostgreSQL store and a RabbitMQ bus.

`wire` is what travels on the bus, `link` the STOMP connection to RabbitMQ, `sequencer`
the one order of chat messages on every node, `presence` who is online anywhere, and
`bus` the broker that ties them to the hub (`[bus] backend = "rabbitmq"`).
"""
