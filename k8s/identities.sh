#!/bin/sh
# Issues the NATS identities the Kubernetes manifests use, in a fleet made by
# `mesh identities init FLEET_DIR --host ...` (k8s/README.md), and the fleet's signing key.
#
#   sh k8s/identities.sh FLEET_DIR cloud                 # mesh-cloud-0 .. CLOUD_REPLICAS-1,
#                                                          # console-reviewer
#   SITE=site EDGE_MACHINES="worker-1 worker-2" sh k8s/identities.sh FLEET_DIR site
#
# Node identities are named as the pods name their node (MESH_NODE): the cloud StatefulSet's
# pods, <site>-<gateway pod> and <site>-edge-<machine>. Re-running re-issues them with new keys.
set -eu

dir=${1:?usage: identities.sh FLEET_DIR cloud|site}
side=${2:?usage: identities.sh FLEET_DIR cloud|site}

if [ ! -e "$dir/signing.key" ]; then
    mesh keys generate "$dir/signing.key"
fi

case "$side" in
cloud)
    # the HPA's maxReplicas: a pod it adds connects as the identity of its name
    i=0
    while [ "$i" -lt "${CLOUD_REPLICAS:-6}" ]; do
        mesh identities add "$dir" "mesh-cloud-$i" --role node --tier cloud \
            --downstream-tier gateway --domain hub
        i=$((i + 1))
    done
    # the console labels as a reviewer of its own, so the queue's history tells its labels from
    # those of `mesh review`; the console, review-desk and review-intake come with the fleet
    mesh identities add "$dir" console-reviewer --role reviewer
    ;;
site)
    site=${SITE:-site}
    i=0
    while [ "$i" -lt "${GATEWAY_REPLICAS:-2}" ]; do
        mesh identities add "$dir" "$site-mesh-gateway-$i" --role node --tier gateway \
            --upstream-tier cloud --downstream-tier edge --domain "$site"
        i=$((i + 1))
    done
    for machine in ${EDGE_MACHINES:?set EDGE_MACHINES to the names of the edge machines}; do
        mesh identities add "$dir" "$site-edge-$machine" --role node --tier edge \
            --upstream-tier gateway --entry --domain "$site"
    done
    ;;
*)
    echo "identities.sh: the side is cloud or site, not $side" >&2
    exit 2
    ;;
esac
