#!/bin/sh
# RabbitMQ as the public image runs it: RABBITMQ_DEFAULT_USER/RABBITMQ_DEFAULT_PASS is the first
# user, allowed from any address.
set -eu
cat >/etc/rabbitmq/rabbitmq.conf <<CONF
listeners.tcp.default = 5672
loopback_users = none
default_user = ${RABBITMQ_DEFAULT_USER:-guest}
default_pass = ${RABBITMQ_DEFAULT_PASS:-guest}
CONF
exec rabbitmq-server "$@"
