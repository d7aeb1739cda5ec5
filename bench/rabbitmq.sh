#!/usr/bin/env bash
# RabbitMQ Web-STOMP for the side-by-side benchmark: install, configure (loopback only),
# start pinned to one core, stop, and show the Erlang VM's pid.
#
#   bench/rabbitmq.sh install   apt-get install rabbitmq-server, enable rabbitmq_web_stomp
#   bench/rabbitmq.sh start [--fresh]
#                               start on core 0 (taskset -c 0 and +S 1:1), wait until up;
#                               --fresh first wipes the node's database (queues and messages
#                               left by an earlier run would be recovered into memory)
#   bench/rabbitmq.sh stop      stop it
#   bench/rabbitmq.sh pid       print beam.smp's pid (what run.py measures)
#   bench/rabbitmq.sh status    rabbitmqctl status
#
# Everything listens on 127.0.0.1 only: AMQP 5672, STOMP 61613, Web-STOMP 15674 (/ws),
# Erlang distribution 25672 and epmd 4369. The management plugin stays off: its stats
# collection would cost CPU per message and memory per connection.
# No exchange is declared: the benchmark publishes to /exchange/amq.topic/room.N (a
# built-in exchange; a literal routing key routes like a direct exchange).
set -euo pipefail

CORE="${RABBITMQ_CORE:-0}"
CONF_DIR=/etc/rabbitmq

write_config() {
    mkdir -p "$CONF_DIR"
    cat > "$CONF_DIR/rabbitmq-env.conf" <<'ENV'
# Written by chatd bench/rabbitmq.sh: loopback only, one scheduler.
NODENAME=rabbit@localhost
NODE_IP_ADDRESS=127.0.0.1
NODE_PORT=5672
SERVER_ADDITIONAL_ERL_ARGS="+S 1:1 -kernel inet_dist_use_interface {127,0,0,1}"
export ERL_EPMD_ADDRESS=127.0.0.1
# Sourced by the node's start script (after `su rabbitmq`, which resets the soft limit to
# 1024): connections need file descriptors.
ulimit -n "$(ulimit -Hn)"
ENV
    cat > "$CONF_DIR/rabbitmq.conf" <<'CONF'
# Written by chatd bench/rabbitmq.sh: loopback only.
listeners.tcp.default = 127.0.0.1:5672
stomp.listeners.tcp.1 = 127.0.0.1:61613
web_stomp.tcp.ip = 127.0.0.1
web_stomp.tcp.port = 15674
loopback_users.guest = true
vm_memory_high_watermark.relative = 0.6
CONF
    echo '[rabbitmq_web_stomp].' > "$CONF_DIR/enabled_plugins"
    chown rabbitmq:rabbitmq "$CONF_DIR/enabled_plugins" 2>/dev/null || true
}

beam_pid() {
    # The Erlang VM of the rabbit@localhost node (the only beam.smp run by user rabbitmq).
    pgrep -u rabbitmq -x beam.smp | head -n1
}

case "${1:-}" in
install)
    if ! command -v rabbitmq-server >/dev/null; then
        apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q rabbitmq-server
    fi
    write_config
    # Debian's package tries to start the service; there is no systemd here, so make sure
    # nothing is left running from the install.
    rabbitmq-plugins --offline enable rabbitmq_web_stomp >/dev/null
    echo "rabbitmq-server $(dpkg-query -W -f='${Version}' rabbitmq-server) installed, web_stomp enabled"
    ;;
start)
    write_config
    if pid=$(beam_pid) && [ -n "$pid" ]; then
        echo "already running: beam.smp pid $pid"
        exit 0
    fi
    if [ "${2:-}" = "--fresh" ]; then
        rm -rf /var/lib/rabbitmq/mnesia/rabbit@localhost /var/lib/rabbitmq/mnesia/rabbit@localhost-*
    fi
    taskset -c "$CORE" rabbitmq-server -detached >/dev/null 2>&1
    # -detached returns before the node registers with epmd: poll until it answers.
    for _ in $(seq 120); do
        rabbitmqctl -q -n rabbit@localhost await_startup --timeout 60 >/dev/null 2>&1 && break
        sleep 0.5
    done
    # await_startup returns when the broker boots; the plugin's listener comes right after.
    for _ in $(seq 100); do
        (exec 3<>/dev/tcp/127.0.0.1/15674) 2>/dev/null && break
        sleep 0.1
    done
    pid=$(beam_pid)
    echo "rabbitmq running: beam.smp pid $pid, Web-STOMP ws://127.0.0.1:15674/ws," \
        "cores $(taskset -pc "$pid" | awk '{print $NF}'), open files $(awk '/open files/ {print $4}' "/proc/$pid/limits")"
    ;;
stop)
    pid=$(beam_pid || true)
    if [ -n "$pid" ]; then
        rabbitmqctl -q -n rabbit@localhost stop >/dev/null 2>&1 || true
        for _ in $(seq 300); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
    fi
    # epmd (started with the node) is left alone: it is tiny and bound to 127.0.0.1.
    echo "rabbitmq stopped"
    ;;
pid)
    beam_pid
    ;;
status)
    rabbitmqctl -n rabbit@localhost status
    ;;
*)
    echo "usage: $0 install|start|stop|pid|status" >&2
    exit 2
    ;;
esac
