#!/usr/bin/env bash
# Remove uid=USER,ou=people,... from cn=GROUP,ou=groups,... (as the rootdn).
# Usage: ldap-del-member.sh DIR PORT GROUP USER     (DIR is unused but kept for symmetry)
# Note: groupOfNames requires at least one member; removing the last one fails.
set -euo pipefail
if [ "$#" -ne 4 ]; then
    echo "usage: $0 DIR PORT GROUP USER" >&2
    exit 2
fi
PORT=$2 GROUP=$3 USER_NAME=$4
SUFFIX="dc=carousel,dc=test"
export LDAPCONF=/dev/null LDAPRC=/nonexistent-ldaprc
ldapmodify -x -o nettimeout=5 -H "ldap://127.0.0.1:$PORT" -D "cn=admin,$SUFFIX" -w admin-pw >/dev/null <<LDIF
dn: cn=$GROUP,ou=groups,$SUFFIX
changetype: modify
delete: member
member: uid=$USER_NAME,ou=people,$SUFFIX
LDIF
