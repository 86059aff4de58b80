/* A fake libnvidia-ml.so.1 for tests: just enough NVML for nvidia-ml-py's inventory calls.
 *
 * GPUs come from the environment variable NBFLEET_FAKE_GPUS, read at nvmlInit:
 *   "GPU-uuid1:NVIDIA H100 80GB HBM3:81920;GPU-uuid2:NVIDIA A10:24576"
 * (uuid:name:memory MiB; an optional 4th field is utilization percent). Unset or empty means
 * zero GPUs. NBFLEET_FAKE_NVML_INIT_ERROR=<code> makes init fail with that NVML return code
 * (e.g. 9 = NVML_ERROR_DRIVER_NOT_LOADED).
 *
 * What a GPU is doing can change while the process runs: when NBFLEET_FAKE_GPU_STATE names a
 * file, every utilization, memory and power query reads it again, and a line
 *   "GPU-uuid1 87 31948 312000"
 * (uuid, utilization percent, memory used MiB, power mW) sets that GPU's figures; a GPU without
 * a line (or without the file) keeps its defaults: the 4th field of NBFLEET_FAKE_GPUS for
 * utilization, 512 MiB used, 60 W. A test rewrites the file (atomically) to drive the agent.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_GPUS 16
#define NVML_SUCCESS 0
#define NVML_ERROR_UNINITIALIZED 1
#define NVML_ERROR_INVALID_ARGUMENT 2
#define NVML_ERROR_INSUFFICIENT_SIZE 7
#define NVML_ERROR_DRIVER_NOT_LOADED 9

typedef struct {
    char uuid[96];
    char name[96];
    unsigned long long memory_mb;
    unsigned int utilization;
} fake_gpu;

#define DEFAULT_MEMORY_USED_MB 512ULL
#define DEFAULT_POWER_MW 60000U

typedef struct { unsigned long long total, free, used; } nvmlMemory_t;
typedef struct { unsigned int gpu, memory; } nvmlUtilization_t;

static fake_gpu gpus[MAX_GPUS];
static unsigned int gpu_count = 0;
static int initialized = 0;

static int copy_out(char *dst, unsigned int length, const char *src) {
    if (dst == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    if (strlen(src) + 1 > length) return NVML_ERROR_INSUFFICIENT_SIZE;
    strcpy(dst, src);
    return NVML_SUCCESS;
}

static void load_gpus(void) {
    gpu_count = 0;
    const char *spec = getenv("NBFLEET_FAKE_GPUS");
    if (spec == NULL) return;
    char *copy = strdup(spec);
    char *save_entry = NULL;
    for (char *entry = strtok_r(copy, ";", &save_entry); entry != NULL && gpu_count < MAX_GPUS;
         entry = strtok_r(NULL, ";", &save_entry)) {
        char *save_field = NULL;
        char *uuid = strtok_r(entry, ":", &save_field);
        char *name = strtok_r(NULL, ":", &save_field);
        char *memory = strtok_r(NULL, ":", &save_field);
        char *util = strtok_r(NULL, ":", &save_field);
        if (uuid == NULL || name == NULL || memory == NULL) continue;
        fake_gpu *gpu = &gpus[gpu_count++];
        snprintf(gpu->uuid, sizeof gpu->uuid, "%s", uuid);
        snprintf(gpu->name, sizeof gpu->name, "%s", name);
        gpu->memory_mb = strtoull(memory, NULL, 10);
        gpu->utilization = util ? (unsigned int)strtoul(util, NULL, 10) : 0;
    }
    free(copy);
}

int nvmlInitWithFlags(unsigned int flags) {
    (void)flags;
    const char *fail = getenv("NBFLEET_FAKE_NVML_INIT_ERROR");
    if (fail != NULL && *fail) return atoi(fail);
    load_gpus();
    initialized = 1;
    return NVML_SUCCESS;
}

int nvmlInit_v2(void) { return nvmlInitWithFlags(0); }
int nvmlInit(void) { return nvmlInitWithFlags(0); }

int nvmlShutdown(void) {
    if (!initialized) return NVML_ERROR_UNINITIALIZED;
    initialized = 0;
    return NVML_SUCCESS;
}

const char *nvmlErrorString(int result) {
    switch (result) {
    case NVML_SUCCESS: return "Success";
    case NVML_ERROR_UNINITIALIZED: return "Uninitialized";
    case NVML_ERROR_INVALID_ARGUMENT: return "Invalid Argument";
    case NVML_ERROR_INSUFFICIENT_SIZE: return "Insufficient Size";
    case NVML_ERROR_DRIVER_NOT_LOADED: return "Driver Not Loaded";
    default: return "Unknown Error";
    }
}

int nvmlSystemGetDriverVersion(char *version, unsigned int length) {
    return copy_out(version, length, "550.54.15-fake");
}

int nvmlDeviceGetCount_v2(unsigned int *count) {
    if (!initialized) return NVML_ERROR_UNINITIALIZED;
    if (count == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    *count = gpu_count;
    return NVML_SUCCESS;
}

int nvmlDeviceGetHandleByIndex_v2(unsigned int index, fake_gpu **device) {
    if (!initialized) return NVML_ERROR_UNINITIALIZED;
    if (device == NULL || index >= gpu_count) return NVML_ERROR_INVALID_ARGUMENT;
    *device = &gpus[index];
    return NVML_SUCCESS;
}

static int valid(const fake_gpu *device) {
    return initialized && device >= gpus && device < gpus + gpu_count;
}

int nvmlDeviceGetUUID(fake_gpu *device, char *uuid, unsigned int length) {
    if (!valid(device)) return NVML_ERROR_INVALID_ARGUMENT;
    return copy_out(uuid, length, device->uuid);
}

int nvmlDeviceGetName(fake_gpu *device, char *name, unsigned int length) {
    if (!valid(device)) return NVML_ERROR_INVALID_ARGUMENT;
    return copy_out(name, length, device->name);
}

/* The device's figures now: its defaults, overridden by its line in NBFLEET_FAKE_GPU_STATE. */
typedef struct {
    unsigned int utilization;
    unsigned long long memory_used_mb;
    unsigned int power_mw;
} figures_t;

static figures_t figures(const fake_gpu *device) {
    figures_t now = {device->utilization, DEFAULT_MEMORY_USED_MB, DEFAULT_POWER_MW};
    const char *path = getenv("NBFLEET_FAKE_GPU_STATE");
    if (path == NULL || *path == 0) return now;
    FILE *file = fopen(path, "r");
    if (file == NULL) return now;
    char line[256], uuid[96];
    unsigned int utilization, power;
    unsigned long long memory;
    while (fgets(line, sizeof line, file) != NULL) {
        if (sscanf(line, "%95s %u %llu %u", uuid, &utilization, &memory, &power) == 4
            && strcmp(uuid, device->uuid) == 0) {
            now.utilization = utilization;
            now.memory_used_mb = memory;
            now.power_mw = power;
        }
    }
    fclose(file);
    return now;
}

int nvmlDeviceGetMemoryInfo(fake_gpu *device, nvmlMemory_t *memory) {
    if (!valid(device) || memory == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    memory->total = device->memory_mb * 1024ULL * 1024ULL;
    memory->used = figures(device).memory_used_mb * 1024ULL * 1024ULL;
    if (memory->used > memory->total) memory->used = memory->total;
    memory->free = memory->total - memory->used;
    return NVML_SUCCESS;
}

int nvmlDeviceGetUtilizationRates(fake_gpu *device, nvmlUtilization_t *utilization) {
    if (!valid(device) || utilization == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    utilization->gpu = figures(device).utilization;
    utilization->memory = 0;
    return NVML_SUCCESS;
}

int nvmlDeviceGetPowerUsage(fake_gpu *device, unsigned int *power) {
    if (!valid(device) || power == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    *power = figures(device).power_mw;
    return NVML_SUCCESS;
}
