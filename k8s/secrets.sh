#!/bin/sh
# Prints the Secrets (and the signing key's ConfigMap) one side of the mesh needs, from a fleet
# directory (mesh identities init, k8s/identities.sh), for `kubectl apply -f -`:
#
#   MESH_CONSOLE_TOKEN=... sh k8s/secrets.sh FLEET_DIR cloud | kubectl apply -f -
#   SITE=site sh k8s/secrets.sh FLEET_DIR site | kubectl apply -f -
#
# Each Secret holds one identity's creds, or one workload's (one key per pod, each pod mounting
# only its own key). fleet.json, the operator's and accounts' keys, and the signing key itself
# never go into a cluster.
set -eu

dir=${1:?usage: secrets.sh FLEET_DIR cloud|site}
side=${2:?usage: secrets.sh FLEET_DIR cloud|site}
ns=${NAMESPACE:-edge-mesh}

secret() {
    name=$1
    shift
    kubectl create secret generic "$name" --namespace "$ns" "$@" --dry-run=client -o yaml
    echo "---"
}

files() {
    # --from-file=KEY=PATH for each PATH matching a pattern, keyed by its file name
    for path in "$@"; do
        [ -e "$path" ] || { echo "secrets.sh: no $path (k8s/identities.sh issues it)" >&2; exit 2; }
        printf -- '--from-file=%s=%s ' "$(basename "$path")" "$path"
    done
}

secret mesh-ca --from-file=ca.crt="$dir/tls/ca.pem"
secret mesh-nats-auth --from-file=auth.conf="$dir/auth.conf" \
    --from-file=account.conf="$dir/account.conf"
kubectl create configmap mesh-fleet-keys --namespace "$ns" \
    --from-file=signing.pub="$dir/signing.key.pub" --dry-run=client -o yaml
echo "---"

case "$side" in
cloud)
    secret nats-hub-tls --from-file=tls.crt="$dir/tls/server-cert.pem" \
        --from-file=tls.key="$dir/tls/server-key.pem" --from-file=ca.crt="$dir/tls/ca.pem"
    # shellcheck disable=SC2046 # one flag per file
    secret mesh-cloud-creds $(files "$dir"/creds/mesh-cloud-*.creds)
    secret mesh-controller-creds --from-file=controller.creds="$dir/creds/controller.creds"
    secret mesh-admin-creds --from-file=admin.creds="$dir/creds/admin.creds"
    secret mesh-review-creds --from-file=review-desk.creds="$dir/creds/review-desk.creds" \
        --from-file=review-intake.creds="$dir/creds/review-intake.creds"
    secret mesh-console-creds --from-file=console.creds="$dir/creds/console.creds" \
        --from-file=console-reviewer.creds="$dir/creds/console-reviewer.creds"
    # people's token for the console: yours, never a default (it is what `?token=` takes)
    token=${MESH_CONSOLE_TOKEN:?set MESH_CONSOLE_TOKEN, the token people open the console with, 16 characters or more}
    if [ "${#token}" -lt 16 ]; then
        echo "secrets.sh: MESH_CONSOLE_TOKEN is shorter than 16 characters" >&2
        exit 2
    fi
    secret mesh-console-token --from-literal=token="$token"
    ;;
site)
    site=${SITE:-site}
    secret nats-site-tls --from-file=tls.crt="$dir/tls/server-cert.pem" \
        --from-file=tls.key="$dir/tls/server-key.pem" --from-file=ca.crt="$dir/tls/ca.pem"
    secret mesh-site-leaf --from-file=site-leaf.creds="$dir/creds/site-leaf.creds" \
        --from-file=tls.crt="$dir/tls/client-cert.pem" --from-file=tls.key="$dir/tls/client-key.pem"
    # shellcheck disable=SC2046
    secret mesh-gateway-creds $(files "$dir"/creds/"$site"-mesh-gateway-*.creds)
    # shellcheck disable=SC2046
    secret mesh-edge-creds $(files "$dir"/creds/"$site"-edge-*.creds)
    secret mesh-ingress-creds --from-file=ingress.creds="$dir/creds/ingress.creds"
    token=${MESH_INGRESS_TOKEN:-$(head -c 18 /dev/urandom | base64 | tr '+/' '-_')}
    secret mesh-ingress-token --from-literal=token="$token"
    ;;
*)
    echo "secrets.sh: the side is cloud or site, not $side" >&2
    exit 2
    ;;
esac
