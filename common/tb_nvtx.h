/* tb_nvtx.h - NVTX ranges for Nsight timelines, compiled in with `make NVTX=1`
 * (CUDA builds); otherwise the macros vanish and cost nothing. */
#ifndef TB_NVTX_H
#define TB_NVTX_H

#if defined(TB_HAVE_NVTX)
#include <nvtx3/nvToolsExt.h>
#define TB_RANGE_PUSH(name) nvtxRangePushA(name)
#define TB_RANGE_POP() nvtxRangePop()
#else
#define TB_RANGE_PUSH(name) ((void)0)
#define TB_RANGE_POP() ((void)0)
#endif

#endif
