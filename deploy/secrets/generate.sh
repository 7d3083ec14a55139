#!/bin/sh
# Random passwords and keys for deploy/compose.yaml, one file each. Existing files are
# kept (run it again after adding a secret). Provider keys are yours to write:
#   printf %s "$OPENAI_API_KEY" > deploy/secrets/openai_api_key
# Plain `docker compose` bind-mounts secret files with their host permissions, and the
# containers run as their own users (gateway 10001, redis, postgres, grafana), so the
# files are 0644 and this directory 0700: other users of the host cannot reach them.
set -eu
cd "$(dirname "$0")"
chmod 0700 .
umask 022
random() { od -An -N32 -tx1 /dev/urandom | tr -d ' \n'; }
keep() { [ -s "$1" ] || printf %s "$2" > "$1"; }
keep clasp_admin_key "clasp-admin-$(random)"   # not sk-clasp-: those are virtual keys, looked up in the database
keep clasp_api_key "clasp-static-$(random)"
keep clasp_metrics_token "$(random)"
keep redis_password "$(random)"
keep postgres_password "$(random)"
keep grafana_admin_password "$(random)"
keep redis_url "redis://:$(cat redis_password)@redis:6379/0"
keep database_url "postgresql://clasp:$(cat postgres_password)@postgres:5432/clasp"
[ -e openai_api_key ] || : > openai_api_key
echo "secrets in $(pwd); put your provider keys in openai_api_key (and others you add to clasp.yaml)"
