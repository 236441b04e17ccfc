# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_keyrot_global_optspecs
    string join \n config= output= v/verbose q/quiet h/help V/version
end

function __fish_keyrot_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_keyrot_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_keyrot_using_subcommand
    set -l cmd (__fish_keyrot_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c keyrot -n "__fish_keyrot_needs_command" -l config -d 'Configuration file (TOML)' -r -F
complete -c keyrot -n "__fish_keyrot_needs_command" -l output -d 'Result line format on stdout' -r -f -a "text\t''
json\t''"
complete -c keyrot -n "__fish_keyrot_needs_command" -s v -l verbose -d 'More log detail on stderr (-v info, -vv debug, -vvv trace)'
complete -c keyrot -n "__fish_keyrot_needs_command" -s q -l quiet -d 'Only errors on stderr'
complete -c keyrot -n "__fish_keyrot_needs_command" -s h -l help -d 'Print help'
complete -c keyrot -n "__fish_keyrot_needs_command" -s V -l version -d 'Print version'
complete -c keyrot -n "__fish_keyrot_needs_command" -f -a "init" -d 'Create the ledger, the audit checkpoint key and the audit genesis line (idempotent)'
complete -c keyrot -n "__fish_keyrot_needs_command" -f -a "rotate" -d 'Rotate a domain\'s key if it is due, or if --force and the rate limits allow'
complete -c keyrot -n "__fish_keyrot_needs_command" -f -a "status" -d 'Summarise versions, states, last and next rotation from the ledger (no HSM)'
complete -c keyrot -n "__fish_keyrot_needs_command" -f -a "audit-verify" -d 'Verify the audit chain, its checkpoint signatures and its tail (read-only)'
complete -c keyrot -n "__fish_keyrot_needs_command" -f -a "verify" -d 'Reconcile ledger, HSM and audit head and list every finding (read-only)'
complete -c keyrot -n "__fish_keyrot_needs_command" -f -a "revoke" -d 'Revoke a deprecated key, revoke the active key (--emergency), or destroy a revoked key (--destroy)'
complete -c keyrot -n "__fish_keyrot_needs_command" -f -a "approve" -d 'Sign an approval for an emergency rotate or revoke (approver side; no HSM)'
complete -c keyrot -n "__fish_keyrot_using_subcommand init" -l run-id -d 'Idempotency key of this run; a Control-M job passes %%ORDERID' -r
complete -c keyrot -n "__fish_keyrot_using_subcommand init" -l config -d 'Configuration file (TOML)' -r -F
complete -c keyrot -n "__fish_keyrot_using_subcommand init" -l output -d 'Result line format on stdout' -r -f -a "text\t''
json\t''"
complete -c keyrot -n "__fish_keyrot_using_subcommand init" -s v -l verbose -d 'More log detail on stderr (-v info, -vv debug, -vvv trace)'
complete -c keyrot -n "__fish_keyrot_using_subcommand init" -s q -l quiet -d 'Only errors on stderr'
complete -c keyrot -n "__fish_keyrot_using_subcommand init" -s h -l help -d 'Print help'
complete -c keyrot -n "__fish_keyrot_using_subcommand rotate" -l domain -d 'Key domain to rotate, as named in the configuration' -r
complete -c keyrot -n "__fish_keyrot_using_subcommand rotate" -l run-id -d 'Idempotency key of this run; a Control-M job passes %%ORDERID' -r
complete -c keyrot -n "__fish_keyrot_using_subcommand rotate" -l reason -d 'Reason for the emergency rotation, recorded in the ledger and audit trail' -r
complete -c keyrot -n "__fish_keyrot_using_subcommand rotate" -l approval -d 'Approval document from `keyrot approve`' -r -F
complete -c keyrot -n "__fish_keyrot_using_subcommand rotate" -l config -d 'Configuration file (TOML)' -r -F
complete -c keyrot -n "__fish_keyrot_using_subcommand rotate" -l output -d 'Result line format on stdout' -r -f -a "text\t''
json\t''"
complete -c keyrot -n "__fish_keyrot_using_subcommand rotate" -l all-due -d 'Rotate every due domain in one process, with one HSM login; the exit code is the most severe domain outcome'
complete -c keyrot -n "__fish_keyrot_using_subcommand rotate" -l force -d 'Rotate before the domain is due; min_interval and max_per_day still apply'
complete -c keyrot -n "__fish_keyrot_using_subcommand rotate" -l dry-run -d 'Report what would happen and change nothing'
complete -c keyrot -n "__fish_keyrot_using_subcommand rotate" -l emergency -d 'Rotate now, out of schedule: needs --reason and a signed --approval, skips the due check and min_interval, and still counts against max_per_day'
complete -c keyrot -n "__fish_keyrot_using_subcommand rotate" -s v -l verbose -d 'More log detail on stderr (-v info, -vv debug, -vvv trace)'
complete -c keyrot -n "__fish_keyrot_using_subcommand rotate" -s q -l quiet -d 'Only errors on stderr'
complete -c keyrot -n "__fish_keyrot_using_subcommand rotate" -s h -l help -d 'Print help'
complete -c keyrot -n "__fish_keyrot_using_subcommand status" -l domain -d 'Only this domain' -r
complete -c keyrot -n "__fish_keyrot_using_subcommand status" -l run-id -d 'Idempotency key of this run; a Control-M job passes %%ORDERID' -r
complete -c keyrot -n "__fish_keyrot_using_subcommand status" -l config -d 'Configuration file (TOML)' -r -F
complete -c keyrot -n "__fish_keyrot_using_subcommand status" -l output -d 'Result line format on stdout' -r -f -a "text\t''
json\t''"
complete -c keyrot -n "__fish_keyrot_using_subcommand status" -l pools -d 'Show which pool owns each domain (configuration only, no ledger)'
complete -c keyrot -n "__fish_keyrot_using_subcommand status" -s v -l verbose -d 'More log detail on stderr (-v info, -vv debug, -vvv trace)'
complete -c keyrot -n "__fish_keyrot_using_subcommand status" -s q -l quiet -d 'Only errors on stderr'
complete -c keyrot -n "__fish_keyrot_using_subcommand status" -s h -l help -d 'Print help'
complete -c keyrot -n "__fish_keyrot_using_subcommand audit-verify" -l ledger -d 'Ledger whose audit head the file must contain (detects a file cut short)' -r -F
complete -c keyrot -n "__fish_keyrot_using_subcommand audit-verify" -l pubkey -d 'Checkpoint public key (PEM) that every checkpoint signature must verify with' -r -F
complete -c keyrot -n "__fish_keyrot_using_subcommand audit-verify" -l state -d 'State file remembering the last verified checkpoint (detects rollback and forks); updated only after a full successful pass' -r -F
complete -c keyrot -n "__fish_keyrot_using_subcommand audit-verify" -l run-id -d 'Idempotency key of this run; a Control-M job passes %%ORDERID' -r
complete -c keyrot -n "__fish_keyrot_using_subcommand audit-verify" -l config -d 'Configuration file (TOML)' -r -F
complete -c keyrot -n "__fish_keyrot_using_subcommand audit-verify" -l output -d 'Result line format on stdout' -r -f -a "text\t''
json\t''"
complete -c keyrot -n "__fish_keyrot_using_subcommand audit-verify" -s v -l verbose -d 'More log detail on stderr (-v info, -vv debug, -vvv trace)'
complete -c keyrot -n "__fish_keyrot_using_subcommand audit-verify" -s q -l quiet -d 'Only errors on stderr'
complete -c keyrot -n "__fish_keyrot_using_subcommand audit-verify" -s h -l help -d 'Print help'
complete -c keyrot -n "__fish_keyrot_using_subcommand verify" -l domain -d 'Domain to verify; repeat for several [default: every configured domain]' -r
complete -c keyrot -n "__fish_keyrot_using_subcommand verify" -l run-id -d 'Idempotency key of this run; a Control-M job passes %%ORDERID' -r
complete -c keyrot -n "__fish_keyrot_using_subcommand verify" -l config -d 'Configuration file (TOML)' -r -F
complete -c keyrot -n "__fish_keyrot_using_subcommand verify" -l output -d 'Result line format on stdout' -r -f -a "text\t''
json\t''"
complete -c keyrot -n "__fish_keyrot_using_subcommand verify" -l fail-on-overdue -d 'Treat a domain past its rotate_every as an inconsistency (exit 20)'
complete -c keyrot -n "__fish_keyrot_using_subcommand verify" -s v -l verbose -d 'More log detail on stderr (-v info, -vv debug, -vvv trace)'
complete -c keyrot -n "__fish_keyrot_using_subcommand verify" -s q -l quiet -d 'Only errors on stderr'
complete -c keyrot -n "__fish_keyrot_using_subcommand verify" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c keyrot -n "__fish_keyrot_using_subcommand revoke" -l domain -d 'Key domain, as named in the configuration' -r
complete -c keyrot -n "__fish_keyrot_using_subcommand revoke" -l version -d 'Key version to revoke or destroy' -r
complete -c keyrot -n "__fish_keyrot_using_subcommand revoke" -l reason -d 'Reason for taking the key out of use, recorded in the ledger and the audit trail' -r
complete -c keyrot -n "__fish_keyrot_using_subcommand revoke" -l approval -d 'Signed approval for the emergency action (accepted; not yet checked)' -r -F
complete -c keyrot -n "__fish_keyrot_using_subcommand revoke" -l run-id -d 'Idempotency key of this run; a Control-M job passes %%ORDERID' -r
complete -c keyrot -n "__fish_keyrot_using_subcommand revoke" -l config -d 'Configuration file (TOML)' -r -F
complete -c keyrot -n "__fish_keyrot_using_subcommand revoke" -l output -d 'Result line format on stdout' -r -f -a "text\t''
json\t''"
complete -c keyrot -n "__fish_keyrot_using_subcommand revoke" -l emergency -d 'Allow revoking the active key: the domain is rotated to a new key first'
complete -c keyrot -n "__fish_keyrot_using_subcommand revoke" -l destroy -d 'Destroy a key that is already revoked; the ledger keeps a tombstone'
complete -c keyrot -n "__fish_keyrot_using_subcommand revoke" -s v -l verbose -d 'More log detail on stderr (-v info, -vv debug, -vvv trace)'
complete -c keyrot -n "__fish_keyrot_using_subcommand revoke" -s q -l quiet -d 'Only errors on stderr'
complete -c keyrot -n "__fish_keyrot_using_subcommand revoke" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c keyrot -n "__fish_keyrot_using_subcommand approve" -l domain -d 'Key domain the approval is for' -r
complete -c keyrot -n "__fish_keyrot_using_subcommand approve" -l action -d 'Action the approval allows' -r -f -a "rotate\t''
revoke\t''"
complete -c keyrot -n "__fish_keyrot_using_subcommand approve" -l version -d 'Key version: the target of a revoke (required), or the active version a rotation must replace (optional)' -r
complete -c keyrot -n "__fish_keyrot_using_subcommand approve" -l reason -d 'Reason for the emergency action, recorded in the audit trail' -r
complete -c keyrot -n "__fish_keyrot_using_subcommand approve" -l expires-in -d 'How long the approval stays valid, such as 30m or 4h (at most 7d)' -r
complete -c keyrot -n "__fish_keyrot_using_subcommand approve" -l key -d 'Approver\'s P-256 private key, PEM (PKCS#8 or SEC1), mode 0600 or 0400' -r -F
complete -c keyrot -n "__fish_keyrot_using_subcommand approve" -l approver -d 'Approver name as listed in access.approvers [default: the current account name]' -r
complete -c keyrot -n "__fish_keyrot_using_subcommand approve" -l requester -d 'Account name of the only user who may use the approval' -r
complete -c keyrot -n "__fish_keyrot_using_subcommand approve" -l out -d 'File to create with mode 0600 [default: print the document on stdout]' -r -F
complete -c keyrot -n "__fish_keyrot_using_subcommand approve" -l run-id -d 'Idempotency key of this run; a Control-M job passes %%ORDERID' -r
complete -c keyrot -n "__fish_keyrot_using_subcommand approve" -l config -d 'Configuration file (TOML)' -r -F
complete -c keyrot -n "__fish_keyrot_using_subcommand approve" -l output -d 'Result line format on stdout' -r -f -a "text\t''
json\t''"
complete -c keyrot -n "__fish_keyrot_using_subcommand approve" -s v -l verbose -d 'More log detail on stderr (-v info, -vv debug, -vvv trace)'
complete -c keyrot -n "__fish_keyrot_using_subcommand approve" -s q -l quiet -d 'Only errors on stderr'
complete -c keyrot -n "__fish_keyrot_using_subcommand approve" -s h -l help -d 'Print help'
