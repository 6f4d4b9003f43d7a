"""The fence: before a push takes over a staging directory, and before it
publishes one, nothing else may still be writing into it.

A killed or paused model-sync can leave writers behind on the server (rsync
receivers whose working directory is the stage, with a temporary file open
there): after the lock lapses they would keep writing into the stage a new
push resumes, and, once that is renamed into place, into the live model.
ms_fence finds them through /proc and SIGKILLs them.

`ms_fence DIR... ['' DIR...]` (POSIX sh; tested under dash and bash):
- before the '' argument: any process of this user whose working directory,
  or any open file, is inside DIR (a staging directory is ours alone);
- after it: only processes that hold a file inside DIR open for writing (a
  published model has readers, such as a shell cd'ed into it or a server
  loading it, and those are left alone).
DIRs are compared as resolved paths (cd -P: a link above them is fine, a DIR
that is itself a symlink is skipped), with a trailing slash, against
what the kernel reports for /proc/PID/cwd and /proc/PID/fd/N. The fence's own
shell and its ancestors (the lock holder, sshd, or model-sync itself on this
machine) are never stopped. A DIR that does not exist is skipped; when none
exists the fence costs a few subshells.

Exit status: 0 nothing found; 1 found, killed and gone; 2 something is still
there after three rounds of SIGKILL and a few seconds' wait (a message says
what on stderr).

Linux only: where /proc is missing (another kernel, or /proc not mounted)
there is no way to see another process's directory or files, and it does
nothing (exit 0)."""

FENCE_SH = r"""
ms_fence() (
  [ -r /proc/self/stat ] || exit 0  # no /proc: nothing can be seen, so nothing is done
  unset CDPATH; LC_ALL=C; export LC_ALL  # byte-wise patterns, whatever the names hold
  list= tag=a  # one line a DIR: a or w (writers only), then its resolved path
  for d do
    if [ -z "$d" ]; then tag=w; continue; fi
    while :; do case $d in ?*/) d=${d%/} ;; *) break ;; esac; done
    # a link in the DIR's place (planted, or not ours) is never followed: its
    # target may be anywhere, and anyone's working directory
    [ -L "$d" ] && continue
    r=$(cd -P -- "$d" 2>/dev/null && pwd -P) || continue
    case $r in /) ;; /*) list="$list$tag$r
" ;; esac
  done
  [ -n "$list" ] || exit 0
  set -- -name ''  # find's expression (this first test is always false)
  while IFS= read -r x; do
    [ -n "$x" ] || continue
    g= s=${x#?}  # the path as an fnmatch pattern: \ before \ * ? [ ]
    while [ -n "$s" ]; do
      c=${s%"${s#?}"}; s=${s#?}
      case $c in '*'|'?'|'['|']'|'\') g=$g\\$c ;; *) g=$g$c ;; esac
    done
    case $x in
      a*) set -- "$@" -o \( -lname "$g" -o -lname "$g/*" \) -exec printf 'a %s\n' '{}' + ;;
      *) set -- "$@" -o -path '*/fd/*' \( -lname "$g" -o -lname "$g/*" \) -exec printf 'w %s\n' '{}' + ;;
    esac
  done <<MS_FENCE_END
$list
MS_FENCE_END
  while read -r k _ e _; do [ "$k" = Uid: ] && break; done < /proc/self/status  # (effective)
  read -r me _ < /proc/self/stat  # this subshell ($$ is the shell that called us)
  keep=" " p=$me  # never this shell or its ancestors (the lock holder, sshd; here, model-sync)
  while [ "$p" -gt 1 ] 2>/dev/null; do
    keep="$keep$p "
    t=; read -r t 2>/dev/null < "/proc/$p/stat" || break
    t=${t##*) }; t=${t#* }; p=${t%% *}  # "pid (comm) state ppid ...": comm may hold anything
  done
  cd /proc || exit 0
  # find -lname reads every link in one process; a find without it (busybox)
  # gets the same answer from one readlink a link, far slower
  if find /proc/self/cwd -lname / -exec true '{}' + >/dev/null 2>&1; then lname=1; else lname=; fi
  round=0 killed=
  while :; do
    if [ -n "$lname" ]; then
      hits=$(find [0-9]*/cwd [0-9]*/fd -user "$e" \( "$@" \) 2>/dev/null)
    else
      hits=$(ms_fence_scan "$e" "$list")
    fi
    pids=
    for h in $hits; do  # "a 123/cwd", "w 123/fd/4": /proc's names have no blanks
      case $h in a|w) kind=$h; continue ;; esac
      pid=${h%%/*}
      case $keep$pids in *" $pid "*) continue ;; esac
      if [ "$kind" = w ]; then  # open O_WRONLY or O_RDWR: the last octal digit of its flags
        fl=; while read -r k v; do [ "$k" = flags: ] && fl=$v && break; done 2>/dev/null < "$pid/fdinfo/${h##*/}"
        case $fl in *[123]) ;; *) continue ;; esac
      fi
      pids="$pids$pid "
    done
    [ -n "$pids" ] || break
    if [ $round -ge 3 ]; then
      echo "model-sync: still in the staging directory (or writing into the model) after SIGKILL: $pids" >&2
      exit 2
    fi
    kill -9 $pids 2>/dev/null
    killed="$killed$pids"
    w=0  # until they are gone (a zombie writes nothing): at most 5 s a round
    for pid in $pids; do
      while [ $w -lt 100 ]; do
        t=; read -r t 2>/dev/null < "$pid/stat" || break
        case ${t##*) } in Z*|X*) break ;; esac
        w=$((w + 1)); sleep 0.05 2>/dev/null || sleep 1
      done
    done
    round=$((round + 1))
  done
  [ -z "$killed" ] || exit 1
)
ms_fence_scan() {  # what ms_fence's find prints, by readlink: euid, the tagged list
  for p in [0-9]*; do
    u=; while read -r k _ u _; do [ "$k" = Uid: ] && break; done 2>/dev/null < "$p/status"
    [ "$u" = "$1" ] || continue
    for l in "$p/cwd" "$p"/fd/*; do
      t=$(readlink -- "$l" 2>/dev/null) || continue
      while IFS= read -r x; do
        r=${x#?}
        case $r in /?*) ;; *) continue ;; esac  # (the empty line at the end)
        case $t in "$r"|"$r"/*) ;; *) continue ;; esac
        case $x$l in w*/cwd) continue ;; esac
        printf '%s %s\n' "${x%%/*}" "$l"; break
      done <<MS_FENCE_END
$2
MS_FENCE_END
    done
  done
}
"""
