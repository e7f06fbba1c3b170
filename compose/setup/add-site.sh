#!/bin/sh
# A new site's identities and the files its machine needs, made at the hub:
#   docker compose --profile setup run --rm --entrypoint sh identities /setup/add-site.sh SITE
# writes secrets/sites/SITE/, to copy (keeping owners) to compose/site-secrets/ on the site's
# machine, where remote-site.yaml mounts it. Each identity is the site's own: its nodes
# (SITE-gateway-0, SITE-edge-0, SITE-edge-1, with the site's JetStream domain SITE), its ingress
# and its leaf link.
set -eu

site=${1:?usage: add-site.sh SITE}
dir=${MESH_SECRETS:-/secrets}
uid=${MESH_UID:-10001}
out="$dir/sites/$site"
mkdir -p "$out/creds" "$out/tls"

issue() {
    # issue identity $1 (the rest: its role and place) and copy its creds as $out/creds/$2
    name=$1
    file=$2
    shift 2
    mesh identities add "$dir" "$name" "$@" > /dev/null
    cp "$dir/creds/$name.creds" "$out/creds/$file"
}

issue "$site-gateway-0" gateway-0.creds --role node --tier gateway --upstream-tier cloud \
    --downstream-tier edge --domain "$site"
for i in 0 1; do
    issue "$site-edge-$i" "edge-$i.creds" --role node --tier edge --upstream-tier gateway \
        --entry --domain "$site"
done
issue "$site-ingress" ingress.creds --role ingress
issue "$site-leaf" site-leaf.creds --role leaf

for file in ca.pem server-cert.pem server-key.pem client-cert.pem client-key.pem; do
    cp "$dir/tls/$file" "$out/tls/$file"
done
cp "$dir/auth.conf" "$dir/account.conf" "$dir/signing.key.pub" "$out/"

# the site's processes read their own creds as the image's user; the servers' keys stay root's
for name in gateway-0 edge-0 edge-1 ingress; do
    chown "$uid" "$out/creds/$name.creds"
    chmod 0400 "$out/creds/$name.creds"
done
chmod 0600 "$out/creds/site-leaf.creds" "$out/tls/server-key.pem" "$out/tls/client-key.pem"
chmod 0444 "$out/tls/ca.pem" "$out/signing.key.pub" "$out/auth.conf" "$out/account.conf"
echo "site $site: copy $out to compose/site-secrets on the site's machine (keep the owners)"
