#!/usr/bin/env bash
# Get a TGT for USER (realm CAROUSEL.TEST) into the file ccache CCACHE.
#
# Usage: kinit.sh DIR USER PASSWORD CCACHE
#   DIR is the directory given to start-kdc.sh. CCACHE is a plain file path
#   (no "FILE:" prefix). Afterwards, use KRB5_CONFIG=DIR/krb5.conf
#   KRB5CCNAME=FILE:CCACHE for the GSSAPI client.
set -euo pipefail

if [ "$#" -ne 4 ]; then
    echo "usage: $0 DIR USER PASSWORD CCACHE" >&2
    exit 2
fi
DIR=$1
USER_NAME=$2
PASSWORD=$3
CCACHE=$4

export KRB5_CONFIG="$DIR/krb5.conf"
export KRB5CCNAME="FILE:$CCACHE"

if ! out=$(printf '%s\n' "$PASSWORD" | kinit "$USER_NAME" 2>&1); then
    echo "kinit.sh: kinit $USER_NAME failed: $out" >&2
    exit 1
fi
