# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_warden_global_optspecs
    string join \n c/config= h/help V/version
end

function __fish_warden_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_warden_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_warden_using_subcommand
    set -l cmd (__fish_warden_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c warden -n "__fish_warden_needs_command" -s c -l config -d 'Configuration file' -r -F
complete -c warden -n "__fish_warden_needs_command" -s h -l help -d 'Print help'
complete -c warden -n "__fish_warden_needs_command" -s V -l version -d 'Print version'
complete -c warden -n "__fish_warden_needs_command" -f -a "run" -d 'Run in the foreground (for systemd Type=notify, containers, terminals)'
complete -c warden -n "__fish_warden_needs_command" -f -a "start" -d 'Start the daemon, returning once it is ready (0) or has failed (its reason on stderr); with PROGRAMs, start those programs in the running daemon and wait until every instance of them is up'
complete -c warden -n "__fish_warden_needs_command" -f -a "stop" -d 'Stop the daemon (SIGTERM) and wait until it has exited; with PROGRAMs, stop those programs and keep them down until started again'
complete -c warden -n "__fish_warden_needs_command" -f -a "restart" -d 'Rolling restart of PROGRAMs, one instance at a time; with none, restart the daemon'
complete -c warden -n "__fish_warden_needs_command" -f -a "status" -d 'Show the daemon and every worker (LSB exit codes for the daemon; see warden(8))'
complete -c warden -n "__fish_warden_needs_command" -f -a "reload" -d 'Re-read the configuration and apply what changed; unchanged programs are not touched'
complete -c warden -n "__fish_warden_needs_command" -f -a "scale" -d 'Set the number of instances of a program'
complete -c warden -n "__fish_warden_needs_command" -f -a "check" -d 'Validate the configuration file, printing every problem'
complete -c warden -n "__fish_warden_needs_command" -f -a "healthcheck" -d 'Exit 0 when every instance (of PROGRAMs, or all) is up, ready and passing its health check, else 1 with one line per reason: for Docker\'s HEALTHCHECK and Kubernetes\' exec probes'
complete -c warden -n "__fish_warden_needs_command" -f -a "reopen-logs" -d 'Make the daemon reopen its log files (after rotation)'
complete -c warden -n "__fish_warden_needs_command" -f -a "upgrade" -d 'Replace the running daemon with the binary now at its path (after a package upgrade), in place: same pid, every program untouched. The new binary is checked first; if it cannot take over, the previous one runs on. Prints the old and new versions'
complete -c warden -n "__fish_warden_needs_command" -f -a "resume" -d 'Internal: what `upgrade` executes (the new image taking over the daemon\'s state)'
complete -c warden -n "__fish_warden_needs_command" -f -a "events" -d 'Print every state change as it happens (instances started, ready, exited, restarting, stopped, fatal; health; reloads; rollbacks) until warden stops'
complete -c warden -n "__fish_warden_needs_command" -f -a "completions" -d 'Print a shell completion script for SHELL to standard output'
complete -c warden -n "__fish_warden_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c warden -n "__fish_warden_using_subcommand run" -s c -l config -d 'Configuration file' -r -F
complete -c warden -n "__fish_warden_using_subcommand run" -s h -l help -d 'Print help'
complete -c warden -n "__fish_warden_using_subcommand start" -l timeout -d 'With PROGRAMs: how long to wait for their instances to be up. (The daemon\'s own start waits up to `ready_timeout` of warden.toml.)' -r
complete -c warden -n "__fish_warden_using_subcommand start" -s c -l config -d 'Configuration file' -r -F
complete -c warden -n "__fish_warden_using_subcommand start" -s h -l help -d 'Print help'
complete -c warden -n "__fish_warden_using_subcommand stop" -l timeout -d 'How long to wait, e.g. "30s"' -r
complete -c warden -n "__fish_warden_using_subcommand stop" -s c -l config -d 'Configuration file' -r -F
complete -c warden -n "__fish_warden_using_subcommand stop" -s h -l help -d 'Print help'
complete -c warden -n "__fish_warden_using_subcommand restart" -l timeout -d 'How long to wait' -r
complete -c warden -n "__fish_warden_using_subcommand restart" -s c -l config -d 'Configuration file' -r -F
complete -c warden -n "__fish_warden_using_subcommand restart" -s h -l help -d 'Print help'
complete -c warden -n "__fish_warden_using_subcommand status" -s c -l config -d 'Configuration file' -r -F
complete -c warden -n "__fish_warden_using_subcommand status" -l json -d 'Print the documented JSON schema instead of a table'
complete -c warden -n "__fish_warden_using_subcommand status" -s h -l help -d 'Print help'
complete -c warden -n "__fish_warden_using_subcommand reload" -l timeout -d 'How long to wait for changed programs to be up' -r
complete -c warden -n "__fish_warden_using_subcommand reload" -s c -l config -d 'Configuration file' -r -F
complete -c warden -n "__fish_warden_using_subcommand reload" -l dry-run -d 'Print the plan without applying it'
complete -c warden -n "__fish_warden_using_subcommand reload" -s h -l help -d 'Print help'
complete -c warden -n "__fish_warden_using_subcommand scale" -l timeout -d 'How long to wait for the new instances to be up' -r
complete -c warden -n "__fish_warden_using_subcommand scale" -s c -l config -d 'Configuration file' -r -F
complete -c warden -n "__fish_warden_using_subcommand scale" -s h -l help -d 'Print help'
complete -c warden -n "__fish_warden_using_subcommand check" -s c -l config -d 'Configuration file' -r -F
complete -c warden -n "__fish_warden_using_subcommand check" -s h -l help -d 'Print help'
complete -c warden -n "__fish_warden_using_subcommand healthcheck" -s c -l config -d 'Configuration file' -r -F
complete -c warden -n "__fish_warden_using_subcommand healthcheck" -s h -l help -d 'Print help'
complete -c warden -n "__fish_warden_using_subcommand reopen-logs" -s c -l config -d 'Configuration file' -r -F
complete -c warden -n "__fish_warden_using_subcommand reopen-logs" -s h -l help -d 'Print help'
complete -c warden -n "__fish_warden_using_subcommand upgrade" -l timeout -d 'How long to wait for the new image to answer' -r
complete -c warden -n "__fish_warden_using_subcommand upgrade" -s c -l config -d 'Configuration file' -r -F
complete -c warden -n "__fish_warden_using_subcommand upgrade" -s h -l help -d 'Print help'
complete -c warden -n "__fish_warden_using_subcommand resume" -s c -l config -d 'Configuration file' -r -F
complete -c warden -n "__fish_warden_using_subcommand resume" -l formats -d 'Print the state formats this binary reads, and exit'
complete -c warden -n "__fish_warden_using_subcommand resume" -s h -l help -d 'Print help'
complete -c warden -n "__fish_warden_using_subcommand events" -s c -l config -d 'Configuration file' -r -F
complete -c warden -n "__fish_warden_using_subcommand events" -l json -d 'One JSON object a line (the schema in warden(8)) instead of text'
complete -c warden -n "__fish_warden_using_subcommand events" -s h -l help -d 'Print help'
complete -c warden -n "__fish_warden_using_subcommand completions" -s c -l config -d 'Configuration file' -r -F
complete -c warden -n "__fish_warden_using_subcommand completions" -s h -l help -d 'Print help'
complete -c warden -n "__fish_warden_using_subcommand help; and not __fish_seen_subcommand_from run start stop restart status reload scale check healthcheck reopen-logs upgrade resume events completions help" -f -a "run" -d 'Run in the foreground (for systemd Type=notify, containers, terminals)'
complete -c warden -n "__fish_warden_using_subcommand help; and not __fish_seen_subcommand_from run start stop restart status reload scale check healthcheck reopen-logs upgrade resume events completions help" -f -a "start" -d 'Start the daemon, returning once it is ready (0) or has failed (its reason on stderr); with PROGRAMs, start those programs in the running daemon and wait until every instance of them is up'
complete -c warden -n "__fish_warden_using_subcommand help; and not __fish_seen_subcommand_from run start stop restart status reload scale check healthcheck reopen-logs upgrade resume events completions help" -f -a "stop" -d 'Stop the daemon (SIGTERM) and wait until it has exited; with PROGRAMs, stop those programs and keep them down until started again'
complete -c warden -n "__fish_warden_using_subcommand help; and not __fish_seen_subcommand_from run start stop restart status reload scale check healthcheck reopen-logs upgrade resume events completions help" -f -a "restart" -d 'Rolling restart of PROGRAMs, one instance at a time; with none, restart the daemon'
complete -c warden -n "__fish_warden_using_subcommand help; and not __fish_seen_subcommand_from run start stop restart status reload scale check healthcheck reopen-logs upgrade resume events completions help" -f -a "status" -d 'Show the daemon and every worker (LSB exit codes for the daemon; see warden(8))'
complete -c warden -n "__fish_warden_using_subcommand help; and not __fish_seen_subcommand_from run start stop restart status reload scale check healthcheck reopen-logs upgrade resume events completions help" -f -a "reload" -d 'Re-read the configuration and apply what changed; unchanged programs are not touched'
complete -c warden -n "__fish_warden_using_subcommand help; and not __fish_seen_subcommand_from run start stop restart status reload scale check healthcheck reopen-logs upgrade resume events completions help" -f -a "scale" -d 'Set the number of instances of a program'
complete -c warden -n "__fish_warden_using_subcommand help; and not __fish_seen_subcommand_from run start stop restart status reload scale check healthcheck reopen-logs upgrade resume events completions help" -f -a "check" -d 'Validate the configuration file, printing every problem'
complete -c warden -n "__fish_warden_using_subcommand help; and not __fish_seen_subcommand_from run start stop restart status reload scale check healthcheck reopen-logs upgrade resume events completions help" -f -a "healthcheck" -d 'Exit 0 when every instance (of PROGRAMs, or all) is up, ready and passing its health check, else 1 with one line per reason: for Docker\'s HEALTHCHECK and Kubernetes\' exec probes'
complete -c warden -n "__fish_warden_using_subcommand help; and not __fish_seen_subcommand_from run start stop restart status reload scale check healthcheck reopen-logs upgrade resume events completions help" -f -a "reopen-logs" -d 'Make the daemon reopen its log files (after rotation)'
complete -c warden -n "__fish_warden_using_subcommand help; and not __fish_seen_subcommand_from run start stop restart status reload scale check healthcheck reopen-logs upgrade resume events completions help" -f -a "upgrade" -d 'Replace the running daemon with the binary now at its path (after a package upgrade), in place: same pid, every program untouched. The new binary is checked first; if it cannot take over, the previous one runs on. Prints the old and new versions'
complete -c warden -n "__fish_warden_using_subcommand help; and not __fish_seen_subcommand_from run start stop restart status reload scale check healthcheck reopen-logs upgrade resume events completions help" -f -a "resume" -d 'Internal: what `upgrade` executes (the new image taking over the daemon\'s state)'
complete -c warden -n "__fish_warden_using_subcommand help; and not __fish_seen_subcommand_from run start stop restart status reload scale check healthcheck reopen-logs upgrade resume events completions help" -f -a "events" -d 'Print every state change as it happens (instances started, ready, exited, restarting, stopped, fatal; health; reloads; rollbacks) until warden stops'
complete -c warden -n "__fish_warden_using_subcommand help; and not __fish_seen_subcommand_from run start stop restart status reload scale check healthcheck reopen-logs upgrade resume events completions help" -f -a "completions" -d 'Print a shell completion script for SHELL to standard output'
complete -c warden -n "__fish_warden_using_subcommand help; and not __fish_seen_subcommand_from run start stop restart status reload scale check healthcheck reopen-logs upgrade resume events completions help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
