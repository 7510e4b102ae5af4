#!/usr/bin/env bash
# A single-node SLURM 22.05 cluster on this machine, for tests/test_slurm.py (and for trying the SLURM profile
# by hand). Debian's packages: slurmctld, slurmd, slurm-client, slurmdbd, munge, mariadb-server.
#
#   tests/slurm/cluster.sh install          apt-get the packages (root; skipped when they are there)
#   tests/slurm/cluster.sh start DIR        write configs under DIR and start munged (unless running), MariaDB,
#                                           slurmdbd, slurmctld, slurmd; prints `export SLURM_CONF=DIR/slurm.conf`
#   tests/slurm/cluster.sh stop DIR         stop what `start DIR` started (by the pids it recorded), keep DIR
#
# What it sets up (facts from SLURM 22.05 on these machines, see shared design notes):
# * partitions `main` (default) and `gpu`, one node (this host, 127.0.0.1) declared with CPUS cores, MEM_MB of
#   memory and one `gpu` GRES without a device (gres.conf File=/dev/null; without File= the node registers 0
#   GPUs and is drained). SlurmdParameters=config_overrides lets the declared size exceed the real machine, so
#   the SLURM profile's requests (8 cores, 32 GB for training) are accepted; memory is not a consumable here.
#   `--gpus=1` jobs then run with CUDA_VISIBLE_DEVICES=0.
# * ProctrackType=proctrack/linuxproc, TaskPlugin=task/none (no cgroups in a container), select/cons_tres.
# * Accounting through slurmdbd + MariaDB (TCP on 127.0.0.1 only), because snakemake-executor-plugin-slurm
#   polls job states with `sacct`, which has no records with accounting_storage/none. The job's comment (the
#   plugin writes rule and wildcards there) and gres/gpu are stored, so `sacct` lists which rule each job ran
#   and what it requested.
# Everything (configs, state, logs, database) lives under DIR; /etc/slurm is not touched. Clients find the
# cluster through SLURM_CONF. Ports: SLURMCTLD_PORT (default 16817), SLURMD_PORT (16818), SLURMDBD_PORT
# (16819), MYSQL_PORT (13306).
set -euo pipefail

PACKAGES=(slurmctld slurmd slurm-client slurmdbd munge mariadb-server)
CPUS=${CPUS:-16}
MEM_MB=${MEM_MB:-65536}
SLURMCTLD_PORT=${SLURMCTLD_PORT:-16817}
SLURMD_PORT=${SLURMD_PORT:-16818}
SLURMDBD_PORT=${SLURMDBD_PORT:-16819}
MYSQL_PORT=${MYSQL_PORT:-13306}
DB_PASS=regbench-test-only

die() { echo "cluster.sh: $*" >&2; exit 1; }

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...: retry COMMAND every 0.5 s
    local limit=$1 what=$2; shift 2
    local end=$((SECONDS + limit))
    until "$@" > /dev/null 2>&1; do
        [ "$SECONDS" -lt "$end" ] || die "timed out after ${limit}s waiting for $what"
        sleep 0.5
    done
}

have_packages() {
    command -v slurmctld && command -v slurmd && command -v slurmdbd && command -v sbatch && command -v sacct \
        && command -v munged && command -v mariadbd && command -v mariadb-install-db
}

cmd_install() {
    if have_packages > /dev/null; then echo "cluster.sh: packages present"; return 0; fi
    [ "$(id -u)" = 0 ] || die "installing ${PACKAGES[*]} needs root"
    command -v apt-get > /dev/null || die "apt-get not found: install ${PACKAGES[*]} by hand"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q > /dev/null
    # policy-rc.d 101: the packages' maintainer scripts must not start daemons with the system's config
    local policy=/usr/sbin/policy-rc.d created=0
    if [ ! -e "$policy" ]; then printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod +x "$policy"; created=1; fi
    apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" > /dev/null || {
        [ "$created" = 1 ] && rm -f "$policy"; die "apt-get install ${PACKAGES[*]} failed"; }
    [ "$created" = 1 ] && rm -f "$policy"
    have_packages > /dev/null || die "packages installed but binaries missing"
    echo "cluster.sh: installed ${PACKAGES[*]}"
}

write_configs() {
    local dir=$1 host=$2
    mkdir -p "$dir"/{ctld,spool,log,run,mysql}
    cat > "$dir/slurm.conf" <<EOF
# written by tests/slurm/cluster.sh: a single-node test cluster
ClusterName=regbench
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$SLURMCTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$dir/ctld
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
ReturnToService=2
MinJobAge=600
SchedulerParameters=batch_sched_delay=0
GresTypes=gpu
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$SLURMDBD_PORT
AccountingStorageTRES=gres/gpu
AccountingStoreFlags=job_comment
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
NodeName=$host NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB Gres=gpu:1 State=UNKNOWN
PartitionName=main Nodes=$host Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$host MaxTime=INFINITE State=UP
EOF
    printf 'NodeName=%s Name=gpu File=/dev/null\n' "$host" > "$dir/gres.conf"
    cat > "$dir/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdPort=$SLURMDBD_PORT
SlurmUser=root
PidFile=$dir/run/slurmdbd.pid
LogFile=$dir/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$MYSQL_PORT
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
    chmod 600 "$dir/slurmdbd.conf"
}

start_munge() {
    local dir=$1
    if munge -n 2>/dev/null | unmunge > /dev/null 2>&1; then return 0; fi  # a working munged: use it
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    [ -s /etc/munge/munge.key ] || { mungekey --create --keyfile /etc/munge/munge.key 2>/dev/null \
        || dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 2>/dev/null; }
    chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key
    runuser -u munge -- /usr/sbin/munged
    wait_for 20 munged munge -n
    wait_for 20 "munged's pid file" test -s /run/munge/munged.pid
    cp /run/munge/munged.pid "$dir/run/munged.pid"  # started here: stop stops it
}

start_mysql() {
    local dir=$1
    chown -R mysql:mysql "$dir/mysql"
    if [ ! -d "$dir/mysql/data/mysql" ]; then
        mariadb-install-db --user=mysql --datadir="$dir/mysql/data" --auth-root-authentication-method=socket \
            --skip-test-db > "$dir/log/mysql-install.log" 2>&1 || die "mariadb-install-db failed: $dir/log/mysql-install.log"
    fi
    mariadbd --no-defaults --user=mysql --datadir="$dir/mysql/data" --socket="$dir/mysql/mysql.sock" \
        --pid-file="$dir/mysql/mysqld.pid" --port="$MYSQL_PORT" --bind-address=127.0.0.1 --skip-name-resolve \
        --innodb-buffer-pool-size=64M --log-error="$dir/mysql/mysqld.log" > /dev/null 2>&1 &
    wait_for 60 "MariaDB ($dir/mysql/mysqld.log)" mariadb --no-defaults --socket="$dir/mysql/mysql.sock" -u root -e 'SELECT 1'
    mariadb --no-defaults --socket="$dir/mysql/mysql.sock" -u root <<EOF
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
FLUSH PRIVILEGES;
EOF
}

cmd_start() {
    local dir=${1:?usage: cluster.sh start DIR}
    [ "$(id -u)" = 0 ] || die "starting slurmd/slurmctld/slurmdbd needs root"
    have_packages > /dev/null || die "packages missing: run cluster.sh install"
    mkdir -p "$dir"; dir=$(cd "$dir" && pwd)
    chmod 755 "$dir"  # MariaDB runs as user mysql and must reach $dir/mysql
    [ -e "$dir/run/slurmctld.pid" ] && cmd_stop "$dir" > /dev/null 2>&1 || true
    local host; host=$(hostname -s)
    write_configs "$dir" "$host"
    export SLURM_CONF=$dir/slurm.conf
    start_munge "$dir"
    start_mysql "$dir"
    slurmdbd || die "slurmdbd did not start: $dir/log/slurmdbd.log"
    wait_for 60 slurmdbd sacctmgr -n list cluster
    sacctmgr -i add cluster regbench > /dev/null 2>&1 || true
    sacctmgr -i add account regbench Description=test Organization=test > /dev/null 2>&1 || true
    sacctmgr -i add user root Account=regbench > /dev/null 2>&1 || true
    slurmctld || die "slurmctld did not start: $dir/log/slurmctld.log"
    wait_for 60 slurmctld scontrol ping
    slurmd || die "slurmd did not start: $dir/log/slurmd.log"
    # the node is usable once it has registered and is idle in both partitions
    wait_for 60 "node $host idle" bash -c "sinfo -h -n $host -o %t | grep -qx idle"
    echo "export SLURM_CONF=$SLURM_CONF"
}

stop_pid() {  # stop_pid FILE: TERM the pid in FILE, wait up to 20 s, then KILL
    local f=$1 pid
    [ -s "$f" ] || return 0
    pid=$(cat "$f")
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$f"
}

cmd_stop() {
    local dir=${1:?usage: cluster.sh stop DIR}
    dir=$(cd "$dir" && pwd)
    export SLURM_CONF=$dir/slurm.conf
    [ -e "$SLURM_CONF" ] && scancel --user=root > /dev/null 2>&1 || true
    for name in slurmd slurmctld slurmdbd; do stop_pid "$dir/run/$name.pid"; done
    stop_pid "$dir/mysql/mysqld.pid"
    stop_pid "$dir/run/munged.pid"
    echo "cluster.sh: stopped the cluster of $dir"
}

case "${1:-}" in
    install) cmd_install ;;
    start) shift; cmd_start "$@" ;;
    stop) shift; cmd_stop "$@" ;;
    *) echo "usage: $0 install | start DIR | stop DIR" >&2; exit 2 ;;
esac
