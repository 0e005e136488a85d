-- list_snapshots.lua - a read-only ZFS channel program that lists the
-- snapshots of ONE dataset (or, with r, of it and all its descendants) with
-- the columns zdr's agent reads
-- (agent/src/zfs/cli.rs: name,guid,createtxg,creation,used,userrefs).
--
--   zfs program -n -j -t 100000000 -m 104857600 POOL list_snapshots.lua DATASET [r]
--
-- -n runs it read-only (no txg sync, so it does not wait for one). Returns
-- {count = N, snapshots = {["ds@snap"] = {guid=..., createtxg=..., ...}}}.
-- The order of the `snapshots` table is not the creation order: the caller
-- sorts by createtxg. Each snapshot costs ~5 get_prop calls plus a few Lua
-- instructions, so raise -t (instructions, default 10M) and -m (memory,
-- default 10 MiB) for large counts; their ceilings are the module parameters
-- zfs_lua_max_instrlimit (100M) and zfs_lua_max_memlimit (100 MiB).
args = ...
argv = args["argv"]
local ds = argv[1]
local recurse = argv[2] == "r"
local props = {"guid", "createtxg", "creation", "used", "userrefs"}
local snaps = {}
local n = 0
local function walk(fs)
    for snap in zfs.list.snapshots(fs) do
        local e = {}
        for _, p in ipairs(props) do
            local v = zfs.get_prop(snap, p)
            e[p] = v
        end
        snaps[snap] = e
        n = n + 1
    end
    if recurse then
        for child in zfs.list.children(fs) do
            walk(child)
        end
    end
end
walk(ds)
return {count = n, snapshots = snaps}
