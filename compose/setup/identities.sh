#!/bin/sh
# The fleet's identities for compose.yaml, made once (`docker compose --profile setup run --rm
# identities`): the operator, accounts, servers' auth.conf, development TLS certificates naming
# the servers, a creds file per identity and the fleet's signing key. Each runtime identity's
# file is then owned by the image's user (10001) and readable by it alone; each container mounts
# only its own. fleet.json (the operator's and accounts' keys) stays the administrator's.
set -eu

dir=${MESH_SECRETS:-/secrets}
uid=${MESH_UID:-10001}

if [ ! -e "$dir/fleet.json" ]; then
    hosts=""
    for host in ${MESH_SERVER_HOSTS:-nats-hub nats-site}; do
        hosts="$hosts --host $host"
    done
    # shellcheck disable=SC2086 # one --host flag per word
    mesh identities init "$dir" --edge-replicas "${MESH_EDGE_REPLICAS:-2}" $hosts
fi
if [ ! -e "$dir/signing.key" ]; then
    mesh keys generate "$dir/signing.key"
fi
# The console labels as a reviewer of its own, so the queue's history tells its labels from
# those of `mesh review` (the `reviewer` identity, for people at a terminal).
if [ ! -e "$dir/creds/console-reviewer.creds" ]; then
    mesh identities add "$dir" console-reviewer --role reviewer
fi

# What the mesh's processes read as user $uid: their own creds, the signing key (the admin
# service only) and the public files.
runtime="cloud-0 gateway-0 edge-0 edge-1 controller ingress admin review-desk review-intake"
runtime="$runtime console console-reviewer"
for name in ${MESH_RUNTIME_IDENTITIES:-$runtime}; do
    chown "$uid" "$dir/creds/$name.creds"
    chmod 0400 "$dir/creds/$name.creds"
done
chown "$uid" "$dir/signing.key"
chmod 0400 "$dir/signing.key"
chmod 0444 "$dir/tls/ca.pem" "$dir/signing.key.pub" "$dir/auth.conf" "$dir/account.conf"
echo "identities ready in $dir: runtime creds owned by uid $uid, mode 0400"
